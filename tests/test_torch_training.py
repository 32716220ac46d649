"""Training with sparse layers matches dense masked training; masks that change."""
import copy

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
import torch.nn.utils.prune as prune  # noqa: E402
from torch import nn  # noqa: E402

import sparseprop.torch as spt  # noqa: E402


def mask_randomly(model, sparsity, gen):
    """Zero a random ``sparsity`` fraction of every Linear/Conv2d weight (in place)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight[torch.rand(m.weight.shape, generator=gen) < sparsity] = 0
    return model


def as_pruned(model):
    """The dense reference: masks fixed with torch.nn.utils.prune (zero grads off-mask)."""
    ref = copy.deepcopy(model)
    for m in ref.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            prune.custom_from_mask(m, "weight", m.weight != 0)
    return ref


def mlp():
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 48), nn.Tanh(),
                         nn.Linear(48, 5))


def cnn():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 16, (3, 1), padding="same", groups=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 4 * 4, 10))


def effective(m):
    return spt.dense_weight_of(m)[0]


def train_and_compare(dense_model, x, y, steps=3, lr=0.05, sparsity=0.8):
    gen = torch.Generator().manual_seed(0)
    mask_randomly(dense_model, sparsity, gen)
    ref = as_pruned(dense_model)
    sparse, report = spt.sparsify(dense_model, min_sparsity=0.5, autotune=False)
    assert len(report.converted) == sum(
        isinstance(m, (nn.Linear, nn.Conv2d)) for m in dense_model.modules())
    opt_d = torch.optim.SGD(ref.parameters(), lr=lr, momentum=0.9, weight_decay=1e-3)
    opt_s = torch.optim.SGD(sparse.parameters(), lr=lr, momentum=0.9, weight_decay=1e-3)
    for step in range(steps):
        losses = []
        for model, opt in ((ref, opt_d), (sparse, opt_s)):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5,
                                   msg=f"loss differs at step {step}")
        for (name, md), ms in zip(
                [(n, m) for n, m in ref.named_modules() if isinstance(m, (nn.Linear,
                                                                          nn.Conv2d))],
                [m for m in sparse.modules() if isinstance(m, (spt.SparseLinear,
                                                               spt.SparseConv2d))],
                strict=True):
            w = effective(md)
            torch.testing.assert_close(ms.dense_weight().detach(), w, rtol=1e-5, atol=1e-5,
                                       msg=f"{name} weights differ after step {step}")
            torch.testing.assert_close(ms.bias.detach(), md.bias.detach(), rtol=1e-5,
                                       atol=1e-5)
    return ref, sparse


def test_mlp_training_matches_dense_masked():
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    x = torch.randn(32, 20, generator=gen)
    y = torch.randint(0, 5, (32,), generator=gen)
    train_and_compare(mlp(), x, y)


def test_cnn_training_matches_dense_masked():
    gen = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    x = torch.randn(8, 3, 8, 8, generator=gen)
    y = torch.randint(0, 10, (8,), generator=gen)
    train_and_compare(cnn(), x, y)


# ---------------------------------------------------------------- changing masks

def layer_pair(gen, n_in=30, n_out=20, sparsity=0.7):
    dense = nn.Linear(n_in, n_out)
    with torch.no_grad():
        dense.weight[torch.rand(dense.weight.shape, generator=gen) < sparsity] = 0
    return dense, spt.SparseLinear.from_dense(dense)


def test_prune_keeps_largest_within_nonzeros():
    gen = torch.Generator().manual_seed(3)
    dense, layer = layer_pair(gen)
    before = layer.dense_weight().detach()
    source = layer.prune_(0.9)
    assert layer.nnz == 60
    after = layer.dense_weight().detach()
    kept = after != 0
    assert torch.equal(after[kept], before[kept])  # values kept where kept
    assert before[kept].abs().min() >= before[(before != 0) & ~kept].abs().max()
    assert (source >= 0).all()
    layer.prune_(0.5)  # asks for more than it has: nothing changes
    assert layer.nnz == 60


def test_set_mask_and_regrow_values():
    gen = torch.Generator().manual_seed(4)
    dense, layer = layer_pair(gen)
    old = layer.mask()
    new_mask = old.clone()
    new_mask[0, :] = True
    new_mask[1, :] = False
    layer.set_mask_(new_mask)
    assert torch.equal(layer.mask(), new_mask)
    w = layer.dense_weight().detach()
    assert torch.equal(w[old & new_mask], dense.weight.detach()[old & new_mask])
    assert (w[new_mask & ~old] == 0).all()
    grad = torch.randn(layer.weight_shape, generator=gen)
    grad[layer.mask()] = 100.0  # stored positions are never candidates
    m0 = layer.mask()
    layer.regrow_(7, grad)
    grown = layer.mask() & ~m0
    assert int(grown.sum()) == 7
    cand = grad.abs()[~m0]
    assert grad.abs()[grown].min() >= torch.sort(cand, descending=True).values[6]
    assert (layer.dense_weight().detach()[grown] == 0).all()


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_optimizer_state_follows_the_mask(opt_name):
    gen = torch.Generator().manual_seed(5)
    dense, layer = layer_pair(gen)
    make = (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)) if opt_name == "sgd" else \
        (lambda p: torch.optim.Adam(p, lr=0.01))
    opt = make(layer.parameters())
    x = torch.randn(8, 30, generator=gen)
    for _ in range(2):
        opt.zero_grad()
        layer(x).square().sum().backward()
        opt.step()
    param = layer.values
    old_state = {k: v.clone() for k, v in opt.state[param].items()}
    old_pos = layer.flat_positions()
    new_mask = layer.mask()
    new_mask.view(-1)[old_pos[::3]] = False  # drop every third
    new_mask[5, :] = True  # grow a row
    source = layer.set_mask_(new_mask, optimizer=opt)
    assert layer.values is param  # the optimizer's Parameter object is kept
    state = opt.state[param]
    for key, old in old_state.items():
        if old.dim() == 0:  # Adam's step
            assert torch.equal(state[key], old)
            continue
        assert state[key].shape == (layer.nnz,)
        kept = source >= 0
        assert torch.equal(state[key][kept], old[source[kept]])
        assert (state[key][~kept] == 0).all()
    opt.zero_grad()
    layer(x).square().sum().backward()
    opt.step()  # runs with the remapped state


def test_stale_optimizer_state_fails_loudly():
    gen = torch.Generator().manual_seed(6)
    _, layer = layer_pair(gen)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(4, 30, generator=gen)
    for _ in range(2):
        opt.zero_grad()
        layer(x).sum().backward()
        opt.step()
    layer.prune_(0.95)  # no optimizer given: its momentum has the old length
    opt.zero_grad()
    layer(x).sum().backward()
    with pytest.raises(RuntimeError):
        opt.step()


def test_reprune_and_regrow_keep_training_correct():
    """After every mask change the sparse model trains exactly like a dense
    model masked the same way (same momentum rules: kept entries keep it)."""
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    model = mask_randomly(mlp(), 0.6, gen)
    ref = as_pruned(model)
    sparse, _ = spt.sparsify(model, min_sparsity=0.5, autotune=False)
    opt_d = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    opt_s = torch.optim.SGD(sparse.parameters(), lr=0.05, momentum=0.9)
    x = torch.randn(16, 20, generator=gen)
    y = torch.randint(0, 5, (16,), generator=gen)

    def step():
        out = []
        for m, o in ((ref, opt_d), (sparse, opt_s)):
            o.zero_grad()
            loss = F.cross_entropy(m(x), y)
            loss.backward()
            o.step()
            out.append(loss.detach())
        torch.testing.assert_close(out[1], out[0], rtol=1e-5, atol=1e-5)

    def apply_to_ref(i, layer, source):
        # the dense twin: the new mask; weights and momentum zeroed where
        # entries are new (source -1) or gone
        md = [m for m in ref.modules() if isinstance(m, nn.Linear)][i]
        kept = torch.zeros(layer.weight_shape, dtype=torch.bool)
        kept.view(-1)[layer.flat_positions()[source >= 0]] = True
        with torch.no_grad():
            md.weight_orig.mul_(kept)
            opt_d.state[md.weight_orig]["momentum_buffer"].mul_(kept)
            md.weight_mask.copy_(layer.mask())

    sparse_layers = [m for m in sparse.modules() if isinstance(m, spt.SparseLinear)]
    step()
    step()
    # RigL update on layer 0: dense gradient from one batch
    with spt.DenseGradients(sparse) as dg:
        F.cross_entropy(sparse(x), y).backward()
    name0 = [n for n, m in sparse.named_modules() if m is sparse_layers[0]][0]
    ref_lin0 = [m for m in ref.modules() if isinstance(m, nn.Linear)][0]
    # the dense gradient equals dense autograd's weight gradient (before masking)
    w_eff = effective(ref_lin0).detach().requires_grad_()
    loss = F.cross_entropy(ref[4](ref[3](ref[2](ref[1](F.linear(x, w_eff, ref_lin0.bias))))), y)
    (gw,) = torch.autograd.grad(loss, [w_eff])
    torch.testing.assert_close(dg[name0], gw, rtol=1e-4, atol=1e-5)
    nnz = sparse_layers[0].nnz
    source = spt.rigl_update_(sparse_layers[0], 0.3, dg[name0], optimizer=opt_s)
    assert sparse_layers[0].nnz == nnz and int((source < 0).sum()) == round(0.3 * nnz)
    apply_to_ref(0, sparse_layers[0], source)
    # magnitude re-pruning of layer 1
    apply_to_ref(1, sparse_layers[1], sparse_layers[1].prune_(0.8, optimizer=opt_s))
    opt_s.zero_grad()
    opt_d.zero_grad()
    for _ in range(3):
        step()
    for md, ms in zip([m for m in ref.modules() if isinstance(m, nn.Linear)], sparse_layers,
                      strict=True):
        torch.testing.assert_close(ms.dense_weight().detach(), effective(md), rtol=1e-5,
                                   atol=1e-5)


# ---------------------------------------------------------------- gradual pruning

def test_cubic_schedule():
    s = [spt.cubic_sparsity(t, 0.9, 10, 110) for t in (0, 10, 60, 110, 200)]
    assert s[0] == s[1] == 0.0 and s[3] == s[4] == 0.9
    assert s[2] == pytest.approx(0.9 - 0.9 * 0.5 ** 3)
    assert spt.cubic_sparsity(35, 0.8, 10, 110, initial_sparsity=0.2) == pytest.approx(
        0.8 + (0.2 - 0.8) * 0.75 ** 3)


@pytest.mark.parametrize("scope", ["uniform", "global"])
def test_gradual_pruning_converts_and_keeps_training(scope):
    torch.manual_seed(8)
    gen = torch.Generator().manual_seed(8)
    model = mlp()
    with torch.no_grad():  # same scale everywhere, so a global threshold keeps some of each
        for i in (0, 2):
            model[i].weight.copy_(0.1 * torch.randn(model[i].weight.shape, generator=gen))
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    pruner = spt.GradualMagnitudePruner(model, 0.9, end_step=8, frequency=2, scope=scope,
                                        optimizer=opt, convert_at=0.7)
    assert pruner.layer_names == ["0", "2"]  # the last Linear is excluded
    x = torch.randn(16, 20, generator=gen)
    y = torch.randint(0, 5, (16,), generator=gen)
    kinds = []
    for _ in range(10):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        pruner.step()
        kinds.append(tuple(type(model[i]).__name__ for i in (0, 2)))
        if scope == "uniform" and pruner.history and pruner.history[-1][0] == pruner._step:
            target = pruner.history[-1][1]
            for i in (0, 2):
                nnz = int(spt.dense_weight_of(model[i])[1].sum()) if isinstance(
                    model[i], nn.Linear) else model[i].nnz
                assert nnz == round((1 - target) * (64 * 20 if i == 0 else 48 * 64))
    assert kinds[0] == ("Linear", "Linear")
    assert type(model[4]) is nn.Linear
    assert [t for _, t in pruner.history] == [pytest.approx(spt.cubic_sparsity(s, 0.9, 0, 8))
                                              for s in (0, 2, 4, 6, 8)]
    nnz = [int(spt.dense_weight_of(model[i])[1].sum()) if isinstance(model[i], nn.Linear)
           else model[i].nnz for i in (0, 2)]
    sizes = [20 * 64, 64 * 48]
    if scope == "global":
        assert sum(nnz) == round(0.1 * sum(sizes))
        for i, k, n in zip((0, 2), nnz, sizes, strict=True):
            assert isinstance(model[i], spt.SparseLinear) == (1 - k / n >= 0.7)
    else:
        assert kinds[-1] == ("SparseLinear", "SparseLinear")
        for i in (0, 2):
            assert model[i].sparsity == pytest.approx(0.9, abs=1e-3)
    sparse_idx = [i for i in (0, 2) if isinstance(model[i], spt.SparseLinear)]
    assert sparse_idx
    # the optimizer now holds the sparse values (and not the old dense weights)
    params = {id(p) for g in opt.param_groups for p in g["params"]}
    assert params == {id(p) for p in model.parameters()}
    before = [model[i].values.detach().clone() for i in sparse_idx]
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    for i, b in zip(sparse_idx, before, strict=True):
        assert not torch.equal(b, model[i].values.detach())


def test_gradual_pruning_matches_dense_pruning_before_conversion():
    """Masks chosen during the dense phase are magnitude masks of the effective weight."""
    torch.manual_seed(9)
    model = mlp()
    pruner = spt.GradualMagnitudePruner(model, 0.5, end_step=0, convert_at=None,
                                        exclude_last_linear=False)
    w0 = model[0].weight.detach().clone()
    pruner.step()
    assert isinstance(model[0], nn.Linear) and hasattr(model[0], "weight_mask")
    kept = model[0].weight_mask.bool()
    assert int(kept.sum()) == w0.numel() // 2
    assert w0.abs()[kept].min() >= w0.abs()[~kept].max()


def test_global_scope_uses_one_threshold():
    torch.manual_seed(10)
    model = mlp()
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(64, 20))
        model[2].weight.copy_(0.5 * torch.randn(48, 64))
    w = [model[i].weight.detach().clone() for i in (0, 2)]
    pruner = spt.GradualMagnitudePruner(model, 0.7, end_step=0, scope="global",
                                        convert_at=None)
    pruner.step()
    mags = torch.cat([x.abs().reshape(-1) for x in w])
    k = round(0.3 * mags.numel())
    threshold = torch.sort(mags, descending=True).values[k - 1]
    for i, wi in zip((0, 2), w, strict=True):
        kept = model[i].weight_mask.bool()
        assert torch.equal(kept, wi.abs() >= threshold)
    # the layers end up at different sparsities (uniform would give 0.7 each)
    assert model[0].weight_mask.mean() > 0.4 > 0.3 > model[2].weight_mask.mean()


def test_dense_gradients_of_conv_and_reprune():
    gen = torch.Generator().manual_seed(11)
    conv = nn.Conv2d(4, 6, (3, 2), padding="same", dilation=(1, 1), groups=2)
    with torch.no_grad():
        conv.weight[torch.rand(conv.weight.shape, generator=gen) < 0.7] = 0
    layer = spt.SparseConv2d.from_dense(conv)
    x = torch.randn(3, 4, 7, 6, generator=gen)
    target = torch.randn(3, 6, 7, 6, generator=gen)
    with spt.DenseGradients(layer) as dg:
        (layer(x) - target).square().sum().backward()
    w = conv.weight.detach().clone().requires_grad_()
    loss = (F.conv2d(F.pad(x, (0, 1, 1, 1)), w, conv.bias, groups=2) - target).square().sum()
    (gw,) = torch.autograd.grad(loss, [w])
    torch.testing.assert_close(dg[""], gw, rtol=1e-4, atol=1e-4)
    # the sparse layer's own gradient is the dense one at its nonzeros
    torch.testing.assert_close(layer.values.grad, gw[layer.mask()], rtol=1e-4, atol=1e-4)
    spt.rigl_update_(layer, 0.25, dg[""])
    layer.prune_(0.85)
    assert layer.nnz == round(0.15 * 72)
    torch.testing.assert_close(layer(x), layer.to_dense()(x), rtol=1e-5, atol=1e-5)


def test_gradual_pruning_on_a_cnn():
    torch.manual_seed(12)
    gen = torch.Generator().manual_seed(12)
    model = cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    pruner = spt.GradualMagnitudePruner(model, 0.9, end_step=4, frequency=1, optimizer=opt)
    assert pruner.layer_names == ["2", "4"]  # first conv and last linear stay dense
    x = torch.randn(4, 3, 8, 8, generator=gen)
    y = torch.randint(0, 10, (4,), generator=gen)
    for _ in range(6):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        pruner.step()
    assert type(model[0]) is nn.Conv2d and not hasattr(model[0], "weight_mask")
    for i in (2, 4):
        assert isinstance(model[i], spt.SparseConv2d)
        assert model[i].sparsity == pytest.approx(0.9, abs=0.01)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {
        id(p) for p in model.parameters()}
