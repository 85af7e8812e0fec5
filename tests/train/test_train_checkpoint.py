"""Checkpoints: exact round trips (tied weights, optimizer, buffers) and atomic writes."""

from __future__ import annotations

import json

import pytest
import torch

from nashmoe.models import GPT, GPTConfig
from nashmoe.train import checkpoint as ckpt_mod
from nashmoe.train import find_checkpoint, load_checkpoint, load_tensors, save_checkpoint
from nashmoe.train.checkpoint import optimizer_from_tensors, optimizer_to_tensors, save_tensors


def _model_and_optimizer():
    torch.manual_seed(0)
    cfg = GPTConfig(
        vocab_size=30,
        method="namex",
        n_layer=2,
        d_model=16,
        d_ff=32,
        n_head=2,
        block_size=16,
        segment_len=8,
    )
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randint(0, 30, (2, 16))
    out = model(x, x)
    (out.loss + out.aux_loss).backward()
    opt.step()
    return model, opt


def _optimizer_state(model, opt):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True))


def test_tied_tensors_are_stored_once_and_restored(tmp_path):
    model, _ = _model_and_optimizer()
    sd = model.state_dict()
    assert sd["wte.weight"].data_ptr() == sd["lm_head.weight"].data_ptr()
    save_tensors(tmp_path / "m.safetensors", sd)
    back = load_tensors(tmp_path / "m.safetensors")
    assert set(back) == set(sd)
    for k in sd:
        assert torch.equal(back[k], sd[k]) and back[k].dtype == sd[k].dtype
    assert back["blocks.0.ffn.alpha_prev"].dtype == torch.float64  # solver warm start kept
    fresh = GPT(model.config)
    fresh.load_state_dict(back)
    assert fresh.lm_head.weight.data_ptr() == fresh.wte.weight.data_ptr()


def test_optimizer_state_round_trip():
    model, opt = _model_and_optimizer()
    osd = _optimizer_state(model, opt)
    tensors, meta = optimizer_to_tensors(osd)
    meta = json.loads(json.dumps(meta))  # what the JSON state holds
    back = optimizer_from_tensors(tensors, meta)
    assert set(back["state"]) == set(osd["state"])
    for name, entry in osd["state"].items():
        for k, v in entry.items():
            assert torch.equal(back["state"][name][k], v)
    assert back["param_groups"][0]["betas"] == osd["param_groups"][0]["betas"]
    assert back["param_groups"][0]["params"] == osd["param_groups"][0]["params"]


def _save(root, step, model, opt, **kw):
    return save_checkpoint(
        root,
        step,
        model_state=model.state_dict(),
        optimizer_state=_optimizer_state(model, opt),
        state={"note": f"step {step}"},
        **kw,
    )


def test_save_load_and_pointer(tmp_path):
    model, opt = _model_and_optimizer()
    root = tmp_path / "run" / "checkpoints"
    path = _save(root, 5, model, opt, best_model=model.state_dict())
    assert path.name == "step-00000005"
    for where in (tmp_path / "run", root, path):
        assert find_checkpoint(where) == path
    ck = load_checkpoint(tmp_path / "run")
    assert ck.step == 5 and ck.state["note"] == "step 5" and ck.has_best
    assert torch.equal(ck.model_state()["wte.weight"], model.wte.weight)
    assert torch.equal(ck.best_model_state()["wte.weight"], model.wte.weight)
    assert ck.optimizer_state()["param_groups"][0]["lr"] == 1e-2
    # the best weights can be linked from an earlier checkpoint instead of written again
    path2 = _save(root, 6, model, opt, best_model=path / ckpt_mod.BEST_MODEL, keep=1)
    assert not path.exists()  # pruned (keep=1)
    assert torch.equal(load_checkpoint(root).best_model_state()["wte.weight"], model.wte.weight)
    assert find_checkpoint(tmp_path) is None
    assert path2.exists()


def test_missing_checkpoint_names_what_was_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint found at .*latest\.json"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("fail_on", ["optimizer", "state", "replace"])
def test_a_failed_write_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch, fail_on):
    model, opt = _model_and_optimizer()
    root = tmp_path / "checkpoints"
    first = _save(root, 1, model, opt)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    class Crash(RuntimeError):
        pass

    real_save, real_replace, real_dump = ckpt_mod.save_tensors, ckpt_mod.os.replace, json.dump

    def save(path, tensors, metadata=None):
        if fail_on == "optimizer" and str(path).endswith("optimizer.safetensors"):
            with open(path, "wb") as f:  # a half-written file, then the crash
                f.write(b"\x00" * 100)
            raise Crash
        return real_save(path, tensors, metadata)

    def replace(src, dst):
        if fail_on == "replace" and str(dst).endswith("step-00000002"):
            raise Crash
        return real_replace(src, dst)

    def dump(obj, f, **kw):
        if fail_on == "state" and isinstance(obj, dict) and obj.get("note") == "step 2":
            f.write('{"step": 2, "trunc')
            raise Crash
        return real_dump(obj, f, **kw)

    monkeypatch.setattr(ckpt_mod, "save_tensors", save)
    monkeypatch.setattr(ckpt_mod.os, "replace", replace)
    monkeypatch.setattr(ckpt_mod.json, "dump", dump)
    with pytest.raises(Crash):
        _save(root, 2, model, opt)
    monkeypatch.undo()

    ck = load_checkpoint(root)  # still the first checkpoint, complete
    assert ck.path == first and ck.step == 1
    restored = ck.model_state()
    assert all(torch.equal(restored[k], before[k]) for k in before)
    assert ck.optimizer_state() is not None
    # the next successful write cleans up the debris of the failed one
    _save(root, 3, model, opt)
    assert load_checkpoint(root).step == 3
    assert not [p for p in root.iterdir() if p.name.startswith(".")]
