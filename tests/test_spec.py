"""Model specs, artifacts and the example models."""

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import pytest

from containers.examples.phishing import dataset
from containers.examples.train import ARTIFACTS, train_all
from containers.spec import EXAMPLES, ModelLoadError, load_model, load_spec
from rendezvous.kernel.documents import DocumentError


@pytest.mark.parametrize("name", ["baseline", "forest", "boosted"])
def test_example_models_load_and_score(name):
    model, identity = load_model(load_spec(EXAMPLES / f"{name}.yaml"))
    card = json.loads((ARTIFACTS / f"{name}.card.json").read_text())
    assert identity.artifact_sha256 == card["artifact_sha256"]
    assert 0.0 <= model.predict_one({f: 0.0 for f in ("https", "long_url")} | {
        "empty_server_form_handler": 0.0, "popup_window": 0.0, "request_from_other_domain": 0.0,
        "anchor_from_other_domain": 0.0, "is_popular": 0.5, "age_of_domain": 1.0, "ip_in_url": 0.0}) <= 1.0


def test_committed_artifacts_match_their_cards():
    for name in ("baseline", "forest", "boosted"):
        card = json.loads((ARTIFACTS / f"{name}.card.json").read_text())
        assert hashlib.sha256((ARTIFACTS / f"{name}.pkl").read_bytes()).hexdigest() == card["artifact_sha256"]


def test_training_again_reproduces_every_prediction(tmp_path):
    train_all(tmp_path)
    rows = [x for x, _ in dataset()]
    for name in ("baseline", "forest", "boosted"):
        committed = pickle.loads((ARTIFACTS / f"{name}.pkl").read_bytes())
        retrained = pickle.loads((tmp_path / f"{name}.pkl").read_bytes())
        assert [committed.predict_one(x) for x in rows] == [retrained.predict_one(x) for x in rows], name


def test_a_tampered_artifact_is_refused(tmp_path: Path):
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    (tmp_path / "examples/artifacts/baseline.pkl").write_bytes(b"something else")
    with pytest.raises(ModelLoadError, match="refusing to serve a different artifact"):
        load_model(load_spec(tmp_path / "examples/baseline.yaml"))


def test_bad_specs_name_the_field(tmp_path: Path):
    spec = tmp_path / "m.yaml"
    spec.write_text("name: m\nversion: '1'\nentry: not a callable\n")
    with pytest.raises(DocumentError, match=r"m.yaml:3: entry: String should match pattern"):
        load_spec(spec)
    spec.write_text("name: m\nversion: '1'\nentry: containers.examples.synthetic:nope\n")
    with pytest.raises(DocumentError, match="cannot import containers.examples.synthetic:nope"):
        load_model(load_spec(spec))
    spec.write_text("name: m\nversion: '1'\nentry: containers.examples.synthetic:build\noptions: {colour: red}\n")
    with pytest.raises(ModelLoadError, match="rejected its options"):
        load_model(load_spec(spec))
