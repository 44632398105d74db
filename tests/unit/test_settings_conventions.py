"""Settings as a user of pydantic-settings expects them: typos warned about, `medq config`
showing what is in effect (secrets masked), time windows read in a named time zone."""

import json
import logging
import os
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from medq.common import settings as settings_module
from medq.common.errors import SpecError
from medq.common.settings import load_settings
from medq.common.windows import window_open


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(settings_module, "_WARNED", set())


def test_a_mistyped_variable_is_warned_about_with_the_setting_it_resembles(caplog):
    with caplog.at_level(logging.WARNING, logger="medq.settings"):
        s = load_settings({"MEDQ_LEASE_SECONDZ": "5", "MEDQ_TEST_POSTGRES_URL": "x", "MEDQ_CONFIG": ""})
        load_settings({"MEDQ_LEASE_SECONDZ": "5"})
    assert s.lease_seconds == 60  # ignored, as the warning says
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings  # once per process, not at every load
    assert "MEDQ_LEASE_SECONDZ is not a medq setting" in warnings[0] and "MEDQ_LEASE_SECONDS" in warnings[0]


def test_variables_that_are_settings_or_medqs_own_are_not_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="medq.settings"):
        load_settings({"MEDQ_LEASE_SECONDS": "90", "MEDQ_CHROMIUM": "/usr/bin/chromium", "HOME": "/root"})
    assert not caplog.records


def test_values_are_typed_and_a_bad_one_names_its_variable_or_file(tmp_path):
    s = load_settings({"MEDQ_LEASE_SECONDS": "90", "MEDQ_METRICS_CLUSTER": "off", "MEDQ_HOME": "~/elsewhere"})
    assert s.lease_seconds == 90 and s.metrics_cluster is False and "~" not in str(s.home)
    with pytest.raises(SpecError, match=r"MEDQ_METRICS_CLUSTER: 'maybe' is not a valid bool"):
        load_settings({"MEDQ_METRICS_CLUSTER": "maybe"})
    config = tmp_path / "medq.toml"
    config.write_text('lease_seconds = "soon"\n')
    with pytest.raises(SpecError, match=f"{config}: 'soon' is not a valid int"):
        load_settings({"MEDQ_CONFIG": str(config)})
    config.write_text("lease_secondz = 3\n")
    with pytest.raises(SpecError, match="did you mean 'lease_seconds'"):
        load_settings({"MEDQ_CONFIG": str(config)})
    with pytest.raises(SpecError, match="MEDQ_CONFIG: no file"):
        load_settings({"MEDQ_CONFIG": str(tmp_path / "missing.toml")})


def test_settings_cannot_be_changed_once_read():
    s = load_settings({})
    with pytest.raises(Exception):
        s.lease_seconds = 5


def test_a_window_is_read_in_the_named_time_zone():
    """22:00-06:00 in Tokyo is open at 14:00 UTC (23:00 there) and closed at 14:00 in London."""
    at = datetime(2026, 12, 1, 14, 0, tzinfo=timezone.utc)
    tokyo = load_settings({"MEDQ_TIMEZONE": "Asia/Tokyo"})
    london = load_settings({"MEDQ_TIMEZONE": "Europe/London"})
    assert tokyo.local_time(at).hour == 23 and london.local_time(at).hour == 14
    assert window_open("22:00-06:00", tokyo.local_time(at))
    assert not window_open("22:00-06:00", london.local_time(at))
    assert tokyo.timezone_label == "Asia/Tokyo"
    assert "MEDQ_TIMEZONE" in load_settings({}).timezone_label  # the host's zone, and how to fix it


def test_an_unknown_time_zone_is_refused_when_the_settings_are_read():
    with pytest.raises(SpecError, match="MEDQ_TIMEZONE: 'Europe/Pariss' is not a time zone name"):
        load_settings({"MEDQ_TIMEZONE": "Europe/Pariss"})


def _medq(*args, env):
    return subprocess.run([sys.executable, "-m", "medq.scheduler", *args], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if not k.startswith("MEDQ_")} | env, timeout=60)


def test_medq_config_shows_the_settings_in_effect_and_masks_every_secret(tmp_path):
    config = tmp_path / "medq.toml"
    config.write_text('lease_seconds = 30\nproject = "labA"\n')
    env = {"MEDQ_HOME": str(tmp_path), "MEDQ_CONFIG": str(config), "MEDQ_LEASE_SECONDS": "45",
           "MEDQ_REDIS_PASSWORD": "redis-pw-1", "MEDQ_DATABASE_URL": "postgresql+psycopg://medq:db-pw-2@db/medq",
           "MEDQ_TIMEZONE": "Europe/Zurich", "MEDQ_LEASE_SECONDZ": "5",
           "MEDQ_STUDY_PATHS": "pseudonymised", "MEDQ_PATH_KEY": "path-key-3-of-some-length"}
    done = _medq("config", "--json", env=env)
    assert done.returncode == 0, done.stderr
    for secret in ("redis-pw-1", "db-pw-2", "path-key-3"):
        assert secret not in done.stdout + done.stderr
    shown = {row["variable"]: row for row in json.loads(done.stdout)["settings"]}
    assert shown["MEDQ_LEASE_SECONDS"] == {"variable": "MEDQ_LEASE_SECONDS", "value": "45", "source": "MEDQ_LEASE_SECONDS"}
    assert shown["MEDQ_PROJECT"]["value"] == "labA" and shown["MEDQ_PROJECT"]["source"] == str(config)
    assert shown["MEDQ_MAX_ATTEMPTS"]["source"] == "default"
    assert shown["MEDQ_REDIS_PASSWORD"]["value"] == shown["MEDQ_PATH_KEY"]["value"] == "***"
    assert shown["MEDQ_DATABASE_URL"]["value"] == "postgresql+psycopg://medq:***@db/medq"
    assert json.loads(done.stdout)["ignored"] == ["MEDQ_LEASE_SECONDZ"]
    assert "MEDQ_LEASE_SECONDZ is not a medq setting" in done.stderr
    table = _medq("config", env=env)
    assert table.returncode == 0 and "Europe/Zurich" in table.stdout and "redis-pw-1" not in table.stdout


def test_a_bad_secret_is_named_but_never_shown_and_a_numeric_password_in_the_file_is_text(tmp_path):
    config = tmp_path / "medq.toml"
    config.write_text("pacs_password = 12345678\n")
    assert load_settings({"MEDQ_CONFIG": str(config)}).pacs_password == "12345678"
    config.write_text('pacs_password = ["hunter2"]\n')
    with pytest.raises(SpecError) as refused:
        load_settings({"MEDQ_CONFIG": str(config)})
    assert "hunter2" not in str(refused.value) and "the value given is not a valid str" in str(refused.value)
    from rich.pretty import pretty_repr

    shown = pretty_repr(load_settings({"MEDQ_REDIS_PASSWORD": "redis-pw-9"}))  # rich's and pydantic's printers
    assert "redis-pw-9" not in shown and "redis_password='***'" in shown


def test_only_upper_case_names_are_read_and_a_lower_case_one_is_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="medq.settings"):
        s = load_settings({"medq_home": "/elsewhere", "MEDQ_LEASE_SECONDS": "90"})
    assert str(s.home) != "/elsewhere" and s.lease_seconds == 90
    assert any("medq_home is not a medq setting" in r.getMessage() and "MEDQ_HOME" in r.getMessage()
               for r in caplog.records)
