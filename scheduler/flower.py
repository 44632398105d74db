"""`medq flower`: Flower on medq's broker, with its authentication from medq's settings.

Flower can revoke and terminate tasks, so it serves on loopback unless told otherwise, and on any
other address only behind basic auth (``MEDQ_FLOWER_BASIC_AUTH`` or its ``_FILE``) or OAuth
(``MEDQ_FLOWER_AUTH`` and the ``MEDQ_FLOWER_OAUTH2_*`` settings). The credentials reach Flower in
its own ``FLOWER_*`` environment variables, never on its command line (which every user of the
host can read in ``ps``), and medq never prints them.
"""

from __future__ import annotations

import ipaddress

from medq.common.errors import SpecError
from medq.common.secrets import flower_credentials, read_secret_file

# Flower's options that carry a secret: refused on the command line, where `ps` shows them
SECRET_OPTIONS = ("basic_auth", "oauth2_secret", "cookie_secret")


def option_name(arg: str) -> str | None:
    """The option an argument sets as tornado's parser reads it (``-x``, ``--x``, ``-`` or ``_``)."""
    if not arg.startswith("-"):
        return None
    return arg.lstrip("-").partition("=")[0].replace("-", "_")


def flower_args(args: list[str]) -> list[str]:
    """Flower's options as its parser (tornado's) reads them: ``--name=value``, so that the
    ``--address 0.0.0.0`` spelling a click user types works too; bound to loopback unless an
    address is given (Flower can revoke tasks)."""
    joined: list[str] = []
    for arg in args:
        if joined and joined[-1].startswith("--") and "=" not in joined[-1] and not arg.startswith("-"):
            joined[-1] = f"{joined[-1]}={arg}"
        else:
            joined.append(arg)
    for arg in joined:
        if option_name(arg) in SECRET_OPTIONS:
            raise SpecError(f"{arg.partition('=')[0]} on the command line is readable by every user of this host "
                            f"(ps); set MEDQ_FLOWER_BASIC_AUTH or MEDQ_FLOWER_BASIC_AUTH_FILE (user:password), or "
                            f"MEDQ_FLOWER_OAUTH2_SECRET(_FILE), instead")
    addresses = [a for a in joined if option_name(a) == "address"]
    if len(addresses) > 1:
        raise SpecError(f"--address given {len(addresses)} times; give it once")
    if addresses:  # one spelling, the one check_exposure reads
        joined[joined.index(addresses[0])] = f"--address={addresses[0].partition('=')[2]}"
    else:
        joined.append("--address=127.0.0.1")
    return joined


def flower_env(settings) -> dict[str, str]:
    """The ``FLOWER_*`` variables that turn on Flower's authentication (empty: none set)."""
    env: dict[str, str] = {}
    credentials = flower_credentials(settings)
    if credentials:
        env["FLOWER_BASIC_AUTH"] = ",".join(credentials)
    if settings.flower_auth:
        secret = settings.flower_oauth2_secret or (
            read_secret_file(settings.flower_oauth2_secret_file, "MEDQ_FLOWER_OAUTH2_SECRET_FILE")
            if settings.flower_oauth2_secret_file else "")
        missing = [name for name, value in (("MEDQ_FLOWER_OAUTH2_KEY", settings.flower_oauth2_key),
                                            ("MEDQ_FLOWER_OAUTH2_SECRET", secret),
                                            ("MEDQ_FLOWER_OAUTH2_REDIRECT_URI", settings.flower_oauth2_redirect_uri))
                   if not value]
        if missing:
            raise SpecError(f"MEDQ_FLOWER_AUTH (OAuth) needs {', '.join(missing)} too")
        env.update(FLOWER_AUTH=settings.flower_auth, FLOWER_OAUTH2_KEY=settings.flower_oauth2_key,
                   FLOWER_OAUTH2_SECRET=secret, FLOWER_OAUTH2_REDIRECT_URI=settings.flower_oauth2_redirect_uri)
        if settings.flower_auth_provider:
            env["FLOWER_AUTH_PROVIDER"] = settings.flower_auth_provider
    return env


def is_loopback(address: str) -> bool:
    if address in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:  # a host name, or "" (every interface)
        return False


def check_exposure(args: list[str], env: dict[str, str]) -> str:
    """The address Flower binds; an address other than loopback without authentication (in
    Flower's environment ``env``) is refused."""
    address = next(a.partition("=")[2] for a in args if a.startswith("--address="))
    if not is_loopback(address) and not (env.get("FLOWER_BASIC_AUTH") or env.get("FLOWER_AUTH")):
        shown = address or "every interface"
        raise SpecError(f"refusing to serve Flower on {shown} without authentication: it can revoke and terminate "
                        f"tasks. Set MEDQ_FLOWER_BASIC_AUTH=user:password (or MEDQ_FLOWER_BASIC_AUTH_FILE), or OAuth "
                        f"with MEDQ_FLOWER_AUTH and MEDQ_FLOWER_OAUTH2_KEY/SECRET/REDIRECT_URI; or keep it on "
                        f"--address 127.0.0.1 behind an authenticating proxy")
    return address
