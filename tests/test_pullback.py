"""Pullback spectra against the full Jacobian (torch.autograd.functional.jacobian + float64 eigh)."""

import math

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    ViTConfig,
    ViTForImageClassification,
)

from lightning_geom.geometry.pullback import (
    layer_spectra,
    null_projection,
    pullback_spectrum,
    spectrum_stats,
    subspace_overlap,
)


def _bert():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, num_labels=3, max_position_embeddings=16)
    model = BertForSequenceClassification(cfg).double().eval()
    ids = torch.randint(0, 50, (2, 6))
    emb = model.bert.embeddings.word_embeddings(ids).detach()  # (B, T, d)
    return model, emb, lambda e: model(inputs_embeds=e).logits


def _gpt2():
    torch.manual_seed(1)
    cfg = GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=16, attn_implementation="eager")
    model = GPT2LMHeadModel(cfg).double().eval()  # eager attention: SDPA has no double backward on CPU
    ids = torch.randint(0, 64, (2, 5))
    emb = model.transformer.wte(ids).detach()
    return model, emb, lambda e: model(inputs_embeds=e).logits  # (B, T, V)


def _vit():
    torch.manual_seed(2)
    cfg = ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, num_labels=4)
    model = ViTForImageClassification(cfg).double().eval()
    return model, torch.randn(2, 3, 8, 8, dtype=torch.float64), lambda px: model(pixel_values=px).logits


def _oracle(fn, x1, output, position=None, top=None):
    """eigh of J^T G J from the full Jacobian of one sample, float64: (eigenvalues desc, eigenvectors, J, G)."""
    def logits(inp):
        z = fn(inp.unsqueeze(0))
        return z[0, -1 if position is None else position] if z.ndim == 3 else z[0]

    z0 = logits(x1)
    keep = torch.topk(z0, top).indices if top else torch.arange(z0.shape[0])
    jz = torch.autograd.functional.jacobian(logits, x1).reshape(z0.shape[0], -1)  # (V, n)
    p = torch.softmax(z0, 0)
    if output == "logits":
        j = jz[keep]
        g_out = torch.eye(len(keep), dtype=torch.float64)
    elif output == "probs":
        j = ((torch.diag(p) - torch.outer(p, p)) @ jz)[keep]
        g_out = torch.eye(len(keep), dtype=torch.float64)
    else:  # fisher: G = diag(p) - p p^T on the logits
        j = jz
        g_out = torch.diag(p) - torch.outer(p, p)
    g = j.T @ g_out @ j
    vals, vecs = torch.linalg.eigh(g)
    return vals.flip(0), vecs.flip(1).T, j, g_out


MODELS = {"bert": _bert, "vit": _vit}


@pytest.mark.parametrize("model_name", ["bert", "vit"])
@pytest.mark.parametrize("output", ["logits", "probs", "fisher"])
def test_exact_spectrum_matches_full_jacobian(model_name, output):
    _, x, fn = MODELS[model_name]()
    s = pullback_spectrum(fn, x, output=output, method="exact")
    m = fn(x).shape[-1]
    for i in range(x.shape[0]):
        vals, vecs, _, _ = _oracle(fn, x[i], output)
        top = float(vals[0])
        resolvable = vals > 1e-8 * top
        r = int(resolvable.sum())
        ours = s.eigenvalues[i]
        assert r <= (m if output == "logits" else m - 1)  # rank bound
        torch.testing.assert_close(ours[:r], vals[:r], rtol=1e-8, atol=0)
        assert all(float(v) <= 1e-8 * top for v in ours[r:].abs())  # the rest is numerically zero
        assert float(subspace_overlap(s.eigenvectors[i : i + 1, :r], vecs[None, :r])) == pytest.approx(1.0, abs=1e-8)


def test_gpt2_top_k_logits_against_oracle():
    _, x, fn = _gpt2()
    s = pullback_spectrum(fn, x, output="logits", top_logits=5)
    for i in range(x.shape[0]):
        vals, vecs, _, _ = _oracle(fn, x[i], "logits", top=5)
        torch.testing.assert_close(s.eigenvalues[i], vals[:5], rtol=1e-8, atol=1e-12 * float(vals[0]))
        assert float(subspace_overlap(s.eigenvectors[i : i + 1], vecs[None, :5])) == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize("model_name", ["bert", "vit"])
def test_null_directions_are_invisible(model_name):
    _, x, fn = MODELS[model_name]()
    s = pullback_spectrum(fn, x)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    v = null_projection(s, z, rel_tol=1e-12)
    for i in range(x.shape[0]):
        _, _, j, _ = _oracle(fn, x[i], "logits")
        jv = j @ v[i].reshape(-1)
        assert float(jv.norm()) <= 1e-10 * float(torch.linalg.matrix_norm(j, 2)) * float(v[i].norm())
        assert float(v[i].norm()) > 0.5 * float(z[i].norm())  # most of a random direction is null when n >> m


@pytest.mark.parametrize("method", ["lanczos", "rsvd"])
def test_matrix_free_agrees_with_exact_on_top_k(method):
    _, x, fn = _gpt2()  # full vocabulary head: m = 64 outputs, n = 5 x 16 = 80
    exact = pullback_spectrum(fn, x, method="exact")
    approx = pullback_spectrum(fn, x, method=method, k=6)
    torch.testing.assert_close(approx.eigenvalues, exact.eigenvalues[:, :6], rtol=1e-6, atol=0)
    assert float(subspace_overlap(approx.eigenvectors[:, :4], exact.eigenvectors[:, :4]).min()) == pytest.approx(1.0, abs=1e-6)


def test_layer_spectra_equal_differentiating_the_rest_by_hand():
    from lightning_geom.demo import ImageGPT

    torch.manual_seed(4)
    model = ImageGPT(n_layer=3, width=16, heads=2).double().eval()
    pixels = torch.randint(0, 16, (2, 64))
    spectra = layer_spectra(lambda: _run(model, pixels), output="probs", position=-1)
    with torch.no_grad():
        hidden = model(pixels, output_hidden_states=True).hidden_states
    assert len(spectra) == 4
    for layer in range(4):
        def rest(h, layer=layer):
            for blk in model.blocks[layer:]:
                h = blk(h)
            return model.head(model.ln_f(h))

        ref = pullback_spectrum(rest, hidden[layer], output="probs", position=-1)
        torch.testing.assert_close(spectra[layer].eigenvalues, ref.eigenvalues, rtol=1e-8, atol=1e-14)


def _run(model, pixels):
    out = model(pixels, output_hidden_states=True)
    return out.logits, out.hidden_states


def test_stats_formulas():
    from lightning_geom.geometry.pullback import Spectrum

    lam = torch.tensor([[4.0, 1.0, 0.0]], dtype=torch.float64)
    s = Spectrum(lam, torch.eye(3, dtype=torch.float64)[None], (3,))
    st = spectrum_stats(s)
    assert float(st["top"]) == 4.0 and float(st["trace"]) == 5.0
    assert float(st["participation"]) == pytest.approx(25 / 17)
    p = torch.tensor([0.8, 0.2])
    assert float(st["effective_rank"]) == pytest.approx(math.exp(-(p * p.log()).sum().item()))
    assert float(st["numerical_rank"]) == 2.0
    assert float(st["log_det"]) == pytest.approx(math.log(4.0))


def test_bad_method():
    with pytest.raises(ValueError, match="one of 'auto', 'exact', 'lanczos', 'rsvd'"):
        pullback_spectrum(lambda x: x, torch.ones(1, 2), method="eigh")
    with pytest.raises(ValueError, match="one of"):
        pullback_spectrum(lambda x: x, torch.ones(1, 2), output="kl")


@pytest.mark.parametrize("shape", [(4, 6, 50), (3, 8, 5)])
def test_spectrum_from_jacobian_equals_the_svd_of_j(shape):
    """The R-SVD path (m < n: QR of J^T, then an m x m SVD) and the plain one (m >= n) give the
    singular values of J squared and orthonormal eigenvectors spanning J's row space, also when J
    is rank-deficient (the Fisher metric's rank <= m - 1)."""
    from lightning_geom.geometry.pullback import spectrum_from_jacobian

    g = torch.Generator().manual_seed(0)
    jac = torch.randn(shape, generator=g, dtype=torch.float64)
    jac[:, -1] = jac[:, 0] - 2 * jac[:, 1]  # one output a combination of two others
    s = spectrum_from_jacobian(jac, (shape[-1],))
    ref = torch.linalg.svdvals(jac) ** 2
    torch.testing.assert_close(s.eigenvalues, ref, rtol=1e-12, atol=1e-12 * float(ref.max()))
    r = s.eigenvalues.shape[1]
    torch.testing.assert_close(s.eigenvectors @ s.eigenvectors.transpose(1, 2), torch.eye(r, dtype=torch.float64).expand(shape[0], r, r), atol=1e-12, rtol=0)
    rank = int(torch.linalg.matrix_rank(jac[0]))
    _, _, vh = torch.linalg.svd(jac, full_matrices=False)
    assert float(subspace_overlap(s.eigenvectors[:, :rank], vh[:, :rank]).min()) == pytest.approx(1.0, abs=1e-10)


def _image_gpt_reference(output="probs"):
    from lightning_geom.demo import ImageGPT

    torch.manual_seed(4)
    model = ImageGPT(n_layer=2, width=16, heads=2).double().eval()
    pixels = torch.randint(0, 16, (2, 64))
    return model, pixels, layer_spectra(lambda: _run(model, pixels), output=output, position=-1)


def test_layer_spectra_in_planned_direction_batches_equal_one_batch(monkeypatch):
    """A memory budget that leaves room for one direction at a time: 16 backwards instead of one, same spectra."""
    import lightning_geom.geometry.pullback as pb

    model, pixels, whole = _image_gpt_reference()
    b, m = 2, 16  # two samples, 16 grey levels
    sizes = [64 * 16] * 3  # embeddings + 2 blocks, (T, d) = (64, 16)
    need = b * m * sum(sizes) * 8 + 2 * b * m * max(sizes) * 8  # the documented Jacobian bytes (float64 model)
    calls = []
    real = pb._directions
    monkeypatch.setattr(pb, "_directions", lambda *a, **kw: calls.append(a[2].shape[0]) or real(*a, **kw))
    chunked = layer_spectra(lambda: _run(model, pixels), output="probs", position=-1, memory_budget=need)
    assert calls == [1] * m
    for a, c in zip(whole, chunked):
        torch.testing.assert_close(c.eigenvalues, a.eigenvalues, rtol=1e-12, atol=1e-15)
    calls.clear()
    layer_spectra(lambda: _run(model, pixels), output="probs", position=-1, memory_budget=1 << 40)
    assert calls == [m]
    with pytest.raises(pb.PullbackMemoryError, match=r"top_logits=16.*memory_budget"):
        layer_spectra(lambda: _run(model, pixels), output="probs", position=-1, memory_budget=need - 1)


def test_plan_directions_bounds():
    from lightning_geom.geometry.pullback import PullbackMemoryError, plan_directions

    assert plan_directions(10, 2, [100, 100], 4, budget=None, device="meta") == 10  # no free-memory reading: all at once
    assert 1 <= plan_directions(50_000, 1, [4096] * 13, 4, graph_bytes=4 * 256 * 50_000, budget=64 << 30) < 50_000
    with pytest.raises(PullbackMemoryError, match="50,000 outputs to 13 layers"):
        plan_directions(50_000, 4, [256 * 768] * 13, 4, budget=8 << 30)


def test_top_logits_auto_keeps_a_classifier_head_whole_and_an_lm_head_to_16():
    model, pixels, whole = _image_gpt_reference("fisher")  # 16 outputs: <= 64, all of them
    auto = layer_spectra(lambda: _run(model, pixels), output="fisher", position=-1, top_logits="auto")
    for a, c in zip(whole, auto):
        torch.testing.assert_close(c.eigenvalues, a.eigenvalues, rtol=1e-12, atol=1e-15)
    torch.manual_seed(2)
    cfg = GPT2Config(vocab_size=100, n_embd=16, n_layer=2, n_head=2, n_positions=16)
    lm = GPT2LMHeadModel(cfg).double().eval()
    ids = torch.randint(0, 100, (2, 5))

    def run():
        out = lm(input_ids=ids, output_hidden_states=True)
        return out.logits, out.hidden_states

    auto = layer_spectra(run, output="fisher", top_logits="auto")
    top16 = layer_spectra(run, output="fisher", top_logits=16)
    every = layer_spectra(run, output="fisher")
    assert auto[0].eigenvalues.shape[1] == 16 and every[0].eigenvalues.shape[1] > 16
    for a, t in zip(auto, top16):
        torch.testing.assert_close(a.eigenvalues, t.eigenvalues, rtol=1e-12, atol=1e-15)


def test_position_outside_the_output_is_one_line():
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=16)).eval()
    ids = torch.randint(0, 64, (2, 5))

    def run():
        out = model(input_ids=ids, output_hidden_states=True)
        return out.logits, out.hidden_states

    with pytest.raises(ValueError, match=r"Expected `position` in \[-5, 4\] \(the output has 5 positions\), but got 9"):
        layer_spectra(run, position=9, top_logits=4)


def test_a_non_finite_jacobian_is_named_not_a_lapack_failure():
    """A diverged model (NaN weights after a float16 step) gave LAPACK's 'failed to converge'."""
    from lightning_geom.geometry.pullback import spectrum_from_jacobian

    jac = torch.randn(2, 3, 8, dtype=torch.float64)
    jac[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="Jacobian holds NaN or Inf.*diverged"):
        spectrum_from_jacobian(jac, (8,))


def test_a_plain_networks_logits_in_a_dict_or_a_tuple_are_pulled_back():
    """A plain network returning {"logits": z, ...} or (z, aux) had "no `logits`" (only a tensor or an
    HF output counted): the same spectra as the network returning z."""
    from torch import nn

    from lightning_geom import probe

    class Net(nn.Module):
        def __init__(self, kind):
            super().__init__()
            self.kind, self.inp, self.head = kind, nn.Linear(6, 16), nn.Linear(16, 3)
            self.blocks = nn.ModuleList([nn.Linear(16, 16) for _ in range(3)])

        def forward(self, x):
            h = self.inp(x)
            for b in self.blocks:
                h = torch.tanh(b(h))
            z = self.head(h)
            return {"logits": z, "h": h} if self.kind == "dict" else (z, h.sum()) if self.kind == "tuple" else z

    x, y = torch.randn(60, 6, generator=torch.Generator().manual_seed(0)), torch.arange(60) % 3
    traces = {}
    for kind in ("tensor", "dict", "tuple"):
        torch.manual_seed(0)
        m = probe(Net(kind), (x, y), k=5, pullback_samples=3, pullback_share=1, progress=False).models[0]  # all 3: not cut by time
        assert m.get("pullback_note") is None
        traces[kind] = [p["trace"] for p in m["pullback"]]
    assert traces["dict"] == traces["tensor"] == traces["tuple"] and len(traces["tensor"]) == 3


@pytest.mark.parametrize("output", ["probs", "fisher"])
def test_a_single_output_is_a_binary_logit_not_a_zero_metric(output):
    """softmax of one logit is constant: a one-output head (BCE-style) pulled back g = 0 at every layer for
    "probs" / "fisher" (the probe uses "fisher"). It is read as the two-class logits [0, z] now:
    g = w grad z grad z^T with w = 2 (p (1 - p))^2 for probs and p (1 - p) for fisher, p = sigmoid(z)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    x = torch.randn(3, 5, dtype=torch.float64)
    s = pullback_spectrum(net, x, output=output, method="exact")
    for i in range(3):
        xi = x[i : i + 1].clone().requires_grad_(True)
        z = net(xi)[0, 0]
        (grad,) = torch.autograd.grad(z, xi)
        p = torch.sigmoid(z.detach())
        w = 2 * (p * (1 - p)) ** 2 if output == "probs" else p * (1 - p)  # probs: |d[1 - p, p]/dz|^2
        want = float(w * grad.square().sum())
        assert float(s.eigenvalues[i, 0]) == pytest.approx(want, rel=1e-10) and want > 0
        assert float(s.eigenvalues[i, 1:].abs().max()) <= 1e-12 * want


def test_heads_that_name_their_logits_otherwise_are_pulled_back_or_named():
    """PatchTST's classifier returns `prediction_logits`: it was "no output head". A QA head (start /
    end logits: two heads) is still refused, its note naming what the output holds."""
    from transformers import (
        BertConfig,
        BertForQuestionAnswering,
        PatchTSTConfig,
        PatchTSTForClassification,
    )

    from lightning_geom import probe

    torch.manual_seed(0)
    cfg = PatchTSTConfig(num_input_channels=3, context_length=32, patch_length=8, patch_stride=8, d_model=16,
                         num_hidden_layers=2, num_attention_heads=2, ffn_dim=32, num_targets=3)
    ts = probe(PatchTSTForClassification(cfg).eval(), {"past_values": torch.randn(40, 32, 3), "labels": torch.arange(40) % 3},
               k=5, range_max=8, pullback_samples=2, progress=False).models[0]
    assert ts["pullback_note"] is None and all(p["trace"] > 0 for p in ts["pullback"])
    qa = BertForQuestionAnswering(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)).eval()
    ids = torch.randint(5, 50, (40, 8))
    note = probe(qa, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, k=5, range_max=8, pullback_samples=2, progress=False).models[0]["pullback_note"]
    assert "start_logits" in note and "end_logits" in note
