"""AdaptiveSelector and scoring with plain torch datasets and models outside the registry."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import coreset_curate as cc
from coreset_curate.common.index import epoch_rows, read_index
from coreset_curate.common.tables import read_table, validate_scores

N, K, D = 240, 4, 6  # samples, classes, features


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(N) % K
    x = torch.randn(N, D, generator=g) + 1.5 * nn.functional.one_hot(y, D).float()
    return x, y


def _models(seed: int = 0):
    torch.manual_seed(seed)
    fp = nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, K))
    student = nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, K))
    return fp, student


class _Custom(Dataset):
    """A user's own Dataset: items (x, y) through its own transform, no ``targets``."""

    def __init__(self, x, y, transform=None, with_ids=False):
        self.x, self.y, self.transform, self.with_ids = x, y, transform, with_ids

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x = self.x[i] if self.transform is None else self.transform(self.x[i])
        return (1000 + i, x, int(self.y[i])) if self.with_ids else (x, int(self.y[i]))


def _readme_block(heading: str) -> str:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split(heading, 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_snippet_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_readme_block("## Adaptive selection in your own loop"), "README", "exec"),
         scope)
    index = read_index(tmp_path / "run" / "index.parquet")
    assert sorted(set(index.column("epoch").to_pylist())) == list(range(6))
    assert all(len(epoch_rows(index, e)[0]) == 100 for e in range(6))
    assert sorted(p.name for p in (tmp_path / "run" / "scores").iterdir()) == [
        "epoch_0000.parquet", "epoch_0002.parquet", "epoch_0004.parquet"]


def test_selector_loop_with_tensordataset_and_sequential(tmp_path, monkeypatch):
    x, y = _data()
    train_set = TensorDataset(x, y)
    fp_model, student = _models()
    E, R = 4, 2
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    monkeypatch.chdir(tmp_path)
    sel = cc.AdaptiveSelector(train_set, method="acs", fraction=0.1, epochs=E, reselect_every=R,
                              reference=fp_model, out="run/")
    for epoch in range(E):
        sampler = sel.sampler(epoch, student)
        loader = DataLoader(train_set, batch_size=128, sampler=sampler)
        seen = []
        for xb, yb in loader:
            loss = nn.functional.cross_entropy(student(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen.append(yb)
        # every epoch trains on 10% of every class, exactly the index's subset
        ids, weights = epoch_rows(read_index(tmp_path / "run" / "index.parquet"), epoch)
        assert sorted(sampler) == sorted(ids.tolist()) and len(ids) == 24
        assert np.bincount(y[ids].numpy(), minlength=K).tolist() == [6] * K
        assert torch.cat(seen).numel() == 24 and (weights == 1).all()
    rounds = sorted(p.name for p in (tmp_path / "run" / "scores").glob("*.parquet"))
    assert rounds == ["epoch_0000.parquet", "epoch_0002.parquet"]  # scored when due only
    table = validate_scores(read_table(tmp_path / "run" / "scores" / "epoch_0002.parquet"))
    assert table.column("ds").null_count == 0  # DS against the reference
    # the subset of epoch 2 is ACS's top 10% per class of that round's scores
    expected = cc.select(tmp_path / "run" / "scores" / "epoch_0002.parquet", "acs", 0.1,
                         epoch=2, epochs=E)
    ids2, _ = epoch_rows(sel.index, 2)
    assert ids2.tolist() == expected.sample_ids.tolist()


def test_plain_dataset_scores_match_tensordataset_and_imagedata_path():
    x, y = _data()
    fp, student = _models()
    t = cc.score_dataset(student, TensorDataset(x, y), reference=fp)
    custom = cc.score_dataset(student, _Custom(x, y), reference=fp)
    loader = cc.score_dataset(student, DataLoader(_Custom(x, y), batch_size=7), reference=fp)
    for other in (custom, loader):
        for c in ("sample_id", "label", "evs", "ds", "loss", "pred"):
            assert np.allclose(t.column(c).to_numpy(), other.column(c).to_numpy(), atol=1e-6)
    # EVS by hand for one sample
    with torch.no_grad():
        p = torch.softmax(student(x[:1]), 1)[0]
    assert t.column("evs")[0].as_py() == pytest.approx(float((p - torch.eye(K)[y[0]]).norm()),
                                                      abs=1e-6)
    # an item transform is applied: doubling the inputs changes the scores
    doubled = cc.score_dataset(student, _Custom(x, y, transform=lambda v: 2 * v), reference=fp)
    assert not np.allclose(doubled.column("evs").to_numpy(), t.column("evs").to_numpy())


def test_items_with_ids_key_the_rows_and_bad_items_are_refused():
    x, y = _data()
    _, student = _models()
    t = cc.score_dataset(student, _Custom(x, y, with_ids=True))
    assert t.column("sample_id").to_pylist()[:3] == [1000, 1001, 1002]
    assert t.column("ds").null_count == N  # no reference: DS is null

    class Bad(Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.zeros(D)

    with pytest.raises(TypeError, match=r"\(x, y\) or \(sample_id, x, y\)"):
        cc.score_dataset(student, Bad())
    with pytest.raises(ValueError, match="labels reach 3 but the student outputs 2"):
        cc.score_dataset(nn.Linear(D, 2), TensorDataset(x, y))


def test_in_memory_selector_resumes_from_its_state_dict():
    x, y = _data()
    fp, student = _models()
    ds = TensorDataset(x, y)
    kw = dict(method="acs", fraction=0.2, epochs=4, reselect_every=1, reference=fp, seed=3)
    whole = cc.AdaptiveSelector(ds, **kw)
    first = cc.AdaptiveSelector(ds, **kw)
    for e in range(2):
        assert whole.subset(e, student)[0].tolist() == first.subset(e, student)[0].tolist()
    state = first.state_dict()
    torch.save(state, "/tmp/_sel_state.pt")
    state = torch.load("/tmp/_sel_state.pt", weights_only=True)
    again = cc.AdaptiveSelector(ds, **kw)
    again.load_state_dict(state)
    assert again.has(1) and not again.has(2)
    assert again.totals == first.totals
    for e in (2, 3):
        assert again.subset(e, student)[0].tolist() == whole.subset(e, student)[0].tolist()
    other = cc.AdaptiveSelector(ds, **{**kw, "fraction": 0.3})
    with pytest.raises(ValueError, match="other settings.*fraction"):
        other.load_state_dict(state)


def test_selector_folder_with_other_settings_is_refused(tmp_path):
    x, y = _data()
    fp, student = _models()
    ds = TensorDataset(x, y)
    sel = cc.AdaptiveSelector(ds, method="random_epoch", fraction=0.1, epochs=2,
                              out=tmp_path / "r")
    sel.subset(0)
    # the same settings pick up the index already written (resume)
    again = cc.AdaptiveSelector(ds, method="random_epoch", fraction=0.1, epochs=2,
                                out=tmp_path / "r")
    assert again.has(0)
    with pytest.raises(ValueError, match="other settings"):
        cc.AdaptiveSelector(ds, method="random_epoch", fraction=0.2, epochs=2,
                            out=tmp_path / "r")
    with pytest.raises(ValueError, match="reads the disagreement score: pass reference="):
        cc.AdaptiveSelector(ds, method="acs", epochs=2)


def test_selector_reads_only_the_rounds_its_method_needs(tmp_path, monkeypatch):
    import coreset_curate.selection.selector as selector_mod

    calls = []
    real = selector_mod.select

    def counting(sources, *args, **kwargs):
        calls.append(len(sources))
        return real(sources, *args, **kwargs)

    monkeypatch.setattr(selector_mod, "select", counting)
    reads = []
    monkeypatch.setattr(selector_mod, "read_index",
                        lambda *a, **k: reads.append(a) or pytest.fail("index read"))
    x, y = _data()
    fp, student = _models()
    sel = cc.AdaptiveSelector(TensorDataset(x, y), method="acs", fraction=0.1, epochs=3,
                              reference=fp, out=tmp_path / "r")
    for e in range(3):
        sel.subset(e, student)
    assert calls == [1, 1, 1] and reads == []


_DDP_SCRIPT = textwrap.dedent('''
    import json, os, sys
    import torch, torch.distributed as dist
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    import coreset_curate as cc

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    y = torch.arange(200) % 4
    x = torch.randn(200, 6) + nn.functional.one_hot(y, 6).float()
    fp = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    student = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    ds = TensorDataset(x, y)
    sel = cc.AdaptiveSelector(ds, method="acs", fraction=0.25, epochs=2, reference=fp,
                              out=sys.argv[1])
    shares = {}
    for epoch in range(2):
        sampler = sel.sampler(epoch, student)
        shares[epoch] = [int(i) for i in sampler]
        for xb, yb in DataLoader(ds, batch_size=16, sampler=sampler):
            pass
    with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as fh:
        json.dump(shares, fh)
    dist.barrier()
    dist.destroy_process_group()
''')


def test_selector_under_torchrun_two_gloo_ranks_splits_each_subset(tmp_path):
    import json

    script = tmp_path / "loop.py"
    script.write_text(_DDP_SCRIPT)
    env = {**os.environ, "CORESET_CURATE_PROGRESS": "0", "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node=2", str(script), str(out)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    shares = [json.loads((out / f"rank{k}.json").read_text()) for k in (0, 1)]
    index = read_index(out / "index.parquet")
    for epoch in ("0", "1"):
        a, b = shares[0][epoch], shares[1][epoch]
        ids, _ = epoch_rows(index, int(epoch))
        assert not set(a) & set(b) and sorted(a + b) == ids.tolist() and len(ids) == 52
    assert sorted(p.name for p in (out / "scores").iterdir()) == ["epoch_0000.parquet",
                                                                   "epoch_0001.parquet"]


def test_registries_are_listed_and_audit_is_the_function():
    import coreset_curate.labels.audit  # noqa: F401  (a submodule import must not shadow it)

    assert callable(cc.audit) and cc.audit.__name__ == "audit"
    assert {"acs", "random_epoch", "el2n"} <= set(cc.list_methods())
    assert {"evs", "ds", "loss", "margin"} <= set(cc.list_scores())
    assert {"resnet20", "small_cnn"} <= set(cc.list_models())


def test_quantize_model_takes_a_quantconfig():
    torch.manual_seed(0)
    a = cc.create_model("small_cnn", num_classes=10, in_channels=1)
    b = cc.create_model("small_cnn", num_classes=10, in_channels=1)
    b.load_state_dict(a.state_dict())
    cc.quantize_model(a, cc.QuantConfig(w_bits=2, a_bits=3, first_last="same"))
    cc.quantize_model(b, 2, 3, first_last="same")
    from coreset_curate.quant import quant_config

    assert quant_config(a) == quant_config(b) == cc.QuantConfig(2, 3, first_last="same")
    sb = b.state_dict()
    assert all(torch.equal(v, sb[k]) for k, v in a.state_dict().items()
               if isinstance(v, torch.Tensor))


def test_a_method_that_reads_no_score_needs_no_transform():
    data = cc.load_data("digits", "train")
    sel = cc.AdaptiveSelector(data, method="random_epoch", fraction=0.1, epochs=3)
    first, second = sel.subset(0)[0], sel.subset(1)[0]
    assert len(first) == len(second) == pytest.approx(0.1 * len(data), abs=10)
    assert not np.array_equal(first, second)  # re-drawn every epoch, nothing scored
    with pytest.raises(TypeError, match="needs transform="):  # acs scores: it needs one
        cc.AdaptiveSelector(data, method="acs", fraction=0.1, epochs=3, reference=nn.Linear(1, 1))


def test_wrong_kinds_are_type_errors_and_value_errors():
    """A user's wrong-kind argument is a TypeError (Python's convention) that is also a
    ValueError, so the command line reports it in one line like any other bad input."""
    from coreset_curate.common.checks import InputTypeError

    with pytest.raises(InputTypeError) as err:
        cc.score_dataset("not a model", TensorDataset(*_data()))
    assert isinstance(err.value, TypeError) and isinstance(err.value, ValueError)
    with pytest.raises(ValueError, match="tensor of logits"):  # output that fits no classifier
        cc.score_dataset(nn.Flatten(0), TensorDataset(*_data()))


def test_method_options_must_be_of_their_defaults_kind():
    table = cc.score_dataset(_models()[1], TensorDataset(*_data()))
    with pytest.raises(ValueError, match="option 'hard_cut' must be a finite number"):
        cc.select(table, "ccs", 0.5, options={"hard_cut": "x"})
    with pytest.raises(ValueError, match="option 'reweight' must be true or false"):
        cc.select(table, "rho", 0.5, options={"reweight": "yes"})
    assert len(cc.select(table, "ccs", 0.5, options={"hard_cut": 0})) > 0  # an int is a number


def test_resolve_device_names_what_is_missing():
    from coreset_curate.common.checks import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="'cuda:99' is not available"):
        resolve_device("cuda:99")
    with pytest.raises(ValueError, match="not a device torch knows"):
        resolve_device("gpu")
