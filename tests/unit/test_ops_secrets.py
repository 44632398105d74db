"""Secrets masked in URLs and scrubbed from log records and tracebacks; Flower's authentication
from the settings, refused where it would be exposed."""

from __future__ import annotations

import io
import logging

import pytest

from medq.common.errors import SpecError
from medq.common.secrets import ScrubSecrets, mask_url, secret_values
from medq.common.settings import load_settings
from medq.scheduler.flower import check_exposure, flower_args, flower_env


@pytest.mark.parametrize("url, masked", [
    ("redis://:pw-one@host:6379/0", "redis://:***@host:6379/0"),
    ("redis://user:pw-two@host:6379/0", "redis://user:***@host:6379/0"),
    ("postgresql+psycopg://medq:p@ss:w0rd@db:5432/medq", "postgresql+psycopg://medq:***@db:5432/medq"),
    ("postgresql+psycopg://medq@db/medq?password=qs-secret&sslmode=require",
     "postgresql+psycopg://medq@db/medq?password=***&sslmode=require"),
    ("sqlite:////var/lib/medq/medq.sqlite", "sqlite:////var/lib/medq/medq.sqlite"),
    ("redis://host:6379/0", "redis://host:6379/0"),
])
def test_a_password_in_a_url_is_masked_and_the_rest_is_kept(url, masked):
    assert mask_url(url) == masked


def test_every_secret_of_the_settings_is_known_including_those_in_files(tmp_path):
    (tmp_path / "auth").write_text("ops:from-a-file\n")
    settings = load_settings({"MEDQ_BROKER_URL": "redis://:in-the-url@h/0", "MEDQ_REDIS_PASSWORD": "redis-pw",
                              "MEDQ_DATABASE_URL": "postgresql+psycopg://u:db-pw@h/m",
                              "MEDQ_FLOWER_BASIC_AUTH_FILE": str(tmp_path / "auth"),
                              "MEDQ_PACS_PASSWORD": "pacs-pw"})
    assert set(secret_values(settings)) == {"in-the-url", "redis-pw", "db-pw", "from-a-file", "pacs-pw"}
    assert "redis-pw" not in repr(load_settings({"MEDQ_FLOWER_BASIC_AUTH": "a:redis-pw"}))


def test_a_log_record_and_its_traceback_lose_their_secrets():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ScrubSecrets(["db-pw-123"]))
    logger = logging.getLogger("medq.test.scrub")
    logger.addHandler(handler)
    try:
        try:
            raise ConnectionError("cannot reach postgresql://u:db-pw-123@h/m")
        except ConnectionError:
            logger.exception("round failed for %s", "postgresql://u:db-pw-123@h/m")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "db-pw-123" not in text
    assert "round failed for postgresql://u:***@h/m" in text and "Traceback" in text and "ConnectionError" in text


def test_flower_off_loopback_needs_auth_and_gets_it_through_its_environment():
    args = flower_args(["--port", "5555", "--address", "0.0.0.0"])
    with pytest.raises(SpecError, match="refusing to serve Flower on 0.0.0.0 without authentication"):
        check_exposure(args, {})
    env = flower_env(load_settings({"MEDQ_FLOWER_BASIC_AUTH": "admin:pw-1,ops:pw-2"}))
    assert env == {"FLOWER_BASIC_AUTH": "admin:pw-1,ops:pw-2"}
    assert check_exposure(args, env) == "0.0.0.0"
    assert check_exposure(flower_args(["--port=5555"]), {}) == "127.0.0.1"  # loopback: no auth needed
    with pytest.raises(SpecError, match="refusing"):  # tornado's single-dash spelling is the same option
        check_exposure(flower_args(["-address=0.0.0.0"]), {})
    assert not any("pw-1" in a for a in args)


@pytest.mark.parametrize("bad, message", [
    (["--basic-auth=admin:pw"], "readable by every user of this host"),
    (["--basic_auth", "admin:pw"], "readable by every user of this host"),
    (["-basic_auth=admin:pw"], "readable by every user of this host"),
    (["--address", "127.0.0.1", "--address", "0.0.0.0"], "--address given 2 times"),
])
def test_a_secret_on_flowers_command_line_is_refused(bad, message):
    with pytest.raises(SpecError, match=message):
        flower_args(bad)


def test_flower_oauth_needs_its_key_secret_and_redirect_and_a_bad_entry_is_named(tmp_path):
    with pytest.raises(SpecError, match="MEDQ_FLOWER_OAUTH2_KEY, MEDQ_FLOWER_OAUTH2_SECRET"):
        flower_env(load_settings({"MEDQ_FLOWER_AUTH": ".*@hospital.org",
                                  "MEDQ_FLOWER_OAUTH2_REDIRECT_URI": "https://flower/login"}))
    (tmp_path / "secret").write_text("oauth-secret\n")
    env = flower_env(load_settings({"MEDQ_FLOWER_AUTH": ".*@hospital.org", "MEDQ_FLOWER_OAUTH2_KEY": "k",
                                    "MEDQ_FLOWER_OAUTH2_SECRET_FILE": str(tmp_path / "secret"),
                                    "MEDQ_FLOWER_OAUTH2_REDIRECT_URI": "https://flower/login"}))
    assert env["FLOWER_OAUTH2_SECRET"] == "oauth-secret" and env["FLOWER_AUTH"] == ".*@hospital.org"
    with pytest.raises(SpecError, match="entry 2: expected user:password"):
        flower_env(load_settings({"MEDQ_FLOWER_BASIC_AUTH": "admin:pw,nobody"}))


def test_a_metrics_port_out_of_range_is_refused_at_load():
    with pytest.raises(SpecError, match="MEDQ_METRICS_PORT must be a port number"):
        load_settings({"MEDQ_METRICS_PORT": "70000"})


def test_the_settings_celery_shows_as_configuration_carry_no_password():
    """`celery inspect conf` and Flower's worker page show app.conf, medq's settings included."""
    from celery.utils.saferepr import saferepr
    from celery.utils.serialization import jsonify

    from medq.tasks.app import _censored_conf, make_app

    settings = load_settings({"MEDQ_DATABASE_URL": "postgresql+psycopg://u:db-pw-1@h/x",
                              "MEDQ_BROKER_URL": "redis://:broker-pw-2@h:6379/0", "MEDQ_REDIS_PASSWORD": "redis-pw-3",
                              "MEDQ_FLOWER_BASIC_AUTH": "a:flower-pw-4"})
    assert "database_url='postgresql+psycopg://u:***@h/x'" in repr(settings)
    app = make_app(settings)
    shown = repr(jsonify(_censored_conf(type("State", (), {"app": app})()), unknown_type_filter=saferepr))
    assert "medq_settings" in shown
    for secret in ("db-pw-1", "broker-pw-2", "redis-pw-3", "flower-pw-4"):
        assert secret not in shown and secret not in repr(settings) and secret not in str(settings)
