from pathlib import Path

import pytest

from medq.common.errors import SpecError
from medq.common.settings import load_settings
from medq.common.families.chest.spec import EnsembleSpec
from medq.common.specs import SplitSpec


def test_no_server_configured_means_the_embedded_default_under_medq_home(tmp_path):
    s = load_settings({"MEDQ_HOME": str(tmp_path)})
    assert s.embedded
    assert s.resolved_broker_url == f"medq+sqlite:///{tmp_path / 'broker.sqlite'}"
    assert s.resolved_database_url == f"sqlite:///{tmp_path / 'medq.sqlite'}"
    assert s.artifacts == tmp_path / "artifacts"


def test_environment_wins_over_the_config_file_and_passwords_are_masked(tmp_path):
    config = tmp_path / "medq.toml"
    config.write_text('lease_seconds = 30\nbroker_url = "redis://localhost:6379/0"\n')
    s = load_settings({"MEDQ_CONFIG": str(config), "MEDQ_LEASE_SECONDS": "90",
                       "MEDQ_DATABASE_URL": "postgresql+psycopg://medq:secret@db:5432/medq"})
    assert s.lease_seconds == 90 and s.broker_url == "redis://localhost:6379/0" and not s.embedded
    assert "secret" not in str(s.describe())


def test_a_bad_setting_names_the_variable():
    with pytest.raises(SpecError, match="MEDQ_LEASE_SECONDS"):
        load_settings({"MEDQ_LEASE_SECONDS": "soon"})


def test_an_unknown_setting_in_the_file_lists_the_valid_ones(tmp_path):
    config = tmp_path / "medq.toml"
    config.write_text("lease = 3\n")
    with pytest.raises(SpecError, match="lease_seconds"):
        load_settings({"MEDQ_CONFIG": str(config)})


def test_spec_round_trips_through_json_and_rejects_unknown_names():
    spec = EnsembleSpec(loss="wing", epochs=3, split=SplitSpec(seed=7))
    assert EnsembleSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(SpecError, match="complete.*distance.*mse"):
        EnsembleSpec(loss="huber")
    with pytest.raises(SpecError, match="resnet18"):
        EnsembleSpec(backbone="vgg16")
    with pytest.raises(SpecError, match="unknown EnsembleSpec field"):
        EnsembleSpec.from_dict({"learning_rate": 1})
    with pytest.raises(SpecError, match="batch_size"):
        EnsembleSpec(batch_size=0)
    with pytest.raises(SpecError, match="sum to 1"):
        SplitSpec(train=0.8, val=0.15, test=0.15)


def test_the_torch_registries_accept_exactly_the_names_the_cli_validates():
    from medq.common.families.chest.losses import LOSSES
    from medq.common.families.chest.model import BACKBONES
    from medq.common.families.chest.metrics import AGGREGATORS
    from medq.common.families.chest.spec import LANDMARK_BACKBONES, LANDMARK_LOSSES
    from medq.common.specs import AGGREGATIONS

    assert LOSSES.names() == sorted(LANDMARK_LOSSES)
    assert BACKBONES.names() == sorted(LANDMARK_BACKBONES)
    assert AGGREGATORS.names() == sorted(AGGREGATIONS)
