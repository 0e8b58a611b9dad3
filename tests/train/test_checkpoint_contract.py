"""The one checkpoint contract (train/checkpoint.py): train owns the format, export and bench call it."""

import sys

import pytest

torch = pytest.importorskip("torch", reason='checkpoint tests need torch: pip install "dermsort[train]"')

from test_export import SPEC, TinyCNN, _fake_train_models, _save_checkpoint  # noqa: E402

from dermsort.runtime.errors import ModelError  # noqa: E402
from dermsort.runtime.metadata import ModelMetadata  # noqa: E402
from dermsort.train import checkpoint as contract  # noqa: E402


def _meta() -> ModelMetadata:
    return ModelMetadata(model_id="test-ckpt", architecture="test_tiny_cnn", classes=["benign", "malignant"],
                         malignant_classes=["malignant"], threshold=0.5, preprocess=SPEC)


def test_one_definition_of_the_format_and_the_loader():
    from dermsort.bench import naive
    from dermsort.export import checkpoint as export_checkpoint
    from dermsort.train import finish, trainer

    assert trainer.load_checkpoint is contract.load_checkpoint
    assert (trainer.CHECKPOINT_FORMAT, trainer.CHECKPOINT_VERSION) == (contract.CHECKPOINT_FORMAT, contract.CHECKPOINT_VERSION)
    assert export_checkpoint.read_checkpoint is contract.read_checkpoint
    assert "CHECKPOINT_FORMAT =" not in open(export_checkpoint.__file__).read()
    assert "CHECKPOINT_FORMAT =" not in open(trainer.__file__).read()
    assert "from .checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION" in open(finish.__file__).read()  # the writer
    assert "importlib" not in open(export_checkpoint.__file__).read() and "__import__" not in open(naive.__file__).read()


def test_export_loads_through_train_and_refuses_what_it_cannot_rebuild(tmp_path, monkeypatch):
    from dermsort.export.checkpoint import TRAIN_BUILDER, load_checkpoint

    monkeypatch.setitem(sys.modules, "dermsort.train.models", _fake_train_models())
    torch.manual_seed(0)
    model = TinyCNN(2).eval()
    path = _save_checkpoint(tmp_path / "ok.pt", model, "test_tiny_cnn", _meta())
    loaded = load_checkpoint(path)
    assert loaded.builder == TRAIN_BUILDER and loaded.metadata.model_id == "test-ckpt"
    x = torch.zeros(1, 3, 64, 64)
    assert torch.equal(loaded.model(x), model(x))

    # a gate it cannot rebuild: refused, never exported without it
    raw = torch.load(path, weights_only=True)
    raw["gate"] = {"kind": "not-a-gate"}
    torch.save(raw, tmp_path / "gated.pt")
    with pytest.raises(ModelError, match="not-dermoscopy gate that dermsort.train could not load"):
        load_checkpoint(tmp_path / "gated.pt")

    torch.save({"format": "something-else"}, tmp_path / "foreign.pt")
    with pytest.raises(ModelError, match="is not a dermsort checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="is not a dermsort checkpoint"):  # train's commands catch ValueError
        contract.load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(ModelError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
