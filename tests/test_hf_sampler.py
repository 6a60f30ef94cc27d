import numpy as np
import pytest
import torch

from coreset_curate.cli import main
from coreset_curate.data import FingerprintMismatch, load_data, to_hf_dataset
from coreset_curate.data.subsets import export_subset, load_subset
from coreset_curate.common.index import epoch_rows, read_index
from coreset_curate.selection.sampler import DistributedSubsetSampler, SubsetSampler
from coreset_curate.common.index import index_table
from coreset_curate.selection import Selection
from coreset_curate.common.tables import write_table

datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", "train")


def _index(data, epochs=3, fraction=0.1, seed=0, weights=False):
    rng = np.random.default_rng(seed)
    sels = {}
    for e in range(epochs):
        ids = np.sort(rng.choice(data.sample_ids, int(fraction * len(data)), replace=False))
        w = rng.uniform(0.5, 2, len(ids)) if weights else None
        sels[e] = Selection(ids, w)
    return index_table(sels, metadata={"method": "test", "fingerprint": data.fingerprint}), sels


def test_load_subset_is_dataset_select_of_the_epoch(digits, tmp_path):
    index, sels = _index(digits)
    path = write_table(index, tmp_path / "index.parquet")
    hf = to_hf_dataset(digits)
    sub = load_subset(hf, path, epoch=1)
    assert len(sub) == len(sels[1])
    assert sub["label"] == digits.labels[sels[1].sample_ids].tolist()
    again = load_subset(digits, path, epoch=1, with_weights=True)
    assert again["weight"] == [1.0] * len(sels[1])
    # the index itself opens with datasets
    ds_index = datasets.load_dataset("parquet", data_files=str(path), split="train")
    assert ds_index.column_names == ["epoch", "sample_id", "weight"]
    assert len(ds_index) == index.num_rows
    with pytest.raises(ValueError, match="epoch 7 is not in the index"):
        load_subset(hf, path, epoch=7)


def test_load_subset_refuses_an_index_of_another_dataset(digits, tmp_path):
    index, _ = _index(digits)
    noisy = digits.with_labels((digits.labels + 1) % 10)
    with pytest.raises(FingerprintMismatch, match="another dataset"):
        load_subset(noisy, index, epoch=0)
    test = load_data("digits", "test")
    with pytest.raises(FingerprintMismatch):
        load_subset(test, index, epoch=0)


def test_export_round_trip_keeps_features(digits, tmp_path):
    index, sels = _index(digits)
    write_table(index, tmp_path / "i.parquet")
    out = export_subset("digits", tmp_path / "i.parquet", 2, tmp_path / "export")
    back = datasets.load_dataset("parquet", data_dir=str(tmp_path / "export"), split="train")
    assert back.features == to_hf_dataset(digits).features
    assert len(back) == len(sels[2])
    imgs = np.stack([np.asarray(im) for im in back["image"]])
    assert np.array_equal(imgs, digits.images[sels[2].sample_ids, 0].numpy())
    with pytest.raises(FileExistsError, match="overwrite"):
        export_subset("digits", tmp_path / "i.parquet", 2, tmp_path / "export")
    assert out.read_bytes() == (tmp_path / "export" / out.name).read_bytes()
    assert not [p for p in (tmp_path / "export").iterdir() if p.name.endswith(".tmp")]


def test_sampler_yields_each_id_once_per_epoch(digits):
    index, sels = _index(digits, weights=True)
    sampler = SubsetSampler(index, data=digits, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        got = list(sampler)
        assert sorted(got) == sorted(digits.positions(sels[epoch].sample_ids).tolist())
        assert len(got) == len(sampler)
        w = sampler.weights_of(torch.tensor(got[:10]))
        expected = dict(zip(sels[epoch].sample_ids.tolist(), sels[epoch].weights.tolist()))
        assert w.tolist() == pytest.approx([expected[int(digits.sample_ids[p])] for p in got[:10]])
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) == first  # seeded per epoch
    assert list(SubsetSampler(index, data=digits, shuffle=False)) == sorted(first)


@pytest.mark.parametrize("world", [2, 3])
def test_distributed_shares_are_disjoint_and_cover_the_subset(digits, world):
    index, sels = _index(digits, fraction=0.13)
    shares = [list(DistributedSubsetSampler(index, 1, data=digits, num_replicas=world, rank=r))
              for r in range(world)]
    flat = [p for s in shares for p in s]
    assert len(flat) == len(set(flat)) == len(sels[1])
    assert set(flat) == set(digits.positions(sels[1].sample_ids).tolist())
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    with pytest.raises(ValueError, match="rank"):
        SubsetSampler(index, num_replicas=2, rank=2)


def test_cli_select_writes_then_extends_an_index(digits, tmp_path, capsys):
    from coreset_curate.tasks.classification.demo import DemoConfig, run_demo

    run_demo(tmp_path / "demo", DemoConfig(fp_epochs=2, epochs=2, reselect_every=1,
                                           train_limit=300))
    scores = str(tmp_path / "demo" / "scores.parquet")
    out = str(tmp_path / "idx.parquet")
    assert main(["select", "--scores", scores, "--method", "acs", "--fraction", "0.2",
                 "--epoch", "0", "--epochs", "6", "--reselect-every", "3", "--out", out]) == 0
    assert main(["select", "--scores", scores, "--method", "acs", "--fraction", "0.2",
                 "--epoch", "3", "--epochs", "6", "--reselect-every", "3", "--out", out]) == 0
    index = read_index(out)
    assert sorted(set(index.column("epoch").to_pylist())) == [0, 1, 2, 3, 4, 5]
    ids0, _ = epoch_rows(index, 0)
    assert len(ids0) == 60
    before = (tmp_path / "idx.parquet").read_bytes()
    assert main(["select", "--scores", scores, "--method", "random", "--fraction", "0.2",
                 "--epoch", "6", "--out", out]) == 2  # another method into the same index
    assert main(["select", "--scores", scores, "--method", "acs", "--fraction", "0.2",
                 "--epoch", "3", "--epochs", "6", "--out", out]) == 2  # epoch exists
    assert (tmp_path / "idx.parquet").read_bytes() == before
    err = capsys.readouterr().err
    assert "already has epoch(s) [3]" in err and "method='acs'" in err
    assert main(["select", "--scores", scores, "--method", "ccs", "--fraction", "0.2",
                 "--option", "hard_cut=0.3", "--out", str(tmp_path / "ccs.parquet")]) == 0
    assert main(["select", "--scores", scores, "--method", "ccs", "--fraction", "0.2",
                 "--option", "nope=1", "--out", str(tmp_path / "ccs2.parquet")]) == 2
    assert "has no option(s) ['nope']" in capsys.readouterr().err


def test_real_cifar10_export_equals_dataset_select_byte_for_byte(cifar10_root, tmp_path):
    hf = datasets.load_dataset("parquet", data_files={
        "train": str(cifar10_root / "train-*.parquet")}, split="train")
    labels = np.asarray(hf.with_format("numpy")["label"])
    from coreset_curate.data import fingerprint

    rng = np.random.default_rng(0)
    ids = np.sort(rng.choice(len(hf), 5000, replace=False))
    index = index_table({0: Selection(ids)}, metadata={
        "fingerprint": fingerprint(labels, "train", np.arange(len(hf)))})
    write_table(index, tmp_path / "index.parquet")
    assert main(["export", "--data", str(cifar10_root), "--index", str(tmp_path / "index.parquet"),
                 "--epoch", "0", "--out", str(tmp_path / "out")]) == 0
    back = datasets.load_dataset("parquet", data_dir=str(tmp_path / "out"), split="train")
    want = hf.select(ids)
    assert back.features == hf.features
    a = back.cast_column("img", datasets.Image(decode=False))
    b = want.cast_column("img", datasets.Image(decode=False))
    assert a["label"] == b["label"]
    assert [x["bytes"] for x in a["img"]] == [x["bytes"] for x in b["img"]]
