import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from coreset_curate.cli import main
from coreset_curate.common.index import epoch_rows, read_index
from coreset_curate.training import TrainConfig, load_recipe, run_training, sha256_of

BASE = dict(data="digits", model="small_cnn", batch_size=64, lr=0.05, weight_decay=1e-4,
            channels_last=False, eval_batch_size=512, score_batch_size=512)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("fp")
    summary = run_training(TrainConfig(**BASE, mode="fp", epochs=6, warmup_epochs=1), out)
    return out, summary


def _qat(teacher_dir, **kw):
    return TrainConfig(**{**BASE, "mode": "qat", "teacher": str(teacher_dir / "model.pt"),
                          "optimizer": "adam", "lr": 1e-3, "w_bits": 3, "a_bits": 3,
                          "epochs": 4, "reselect_every": 2, "method": "acs",
                          "fraction": 0.3, **kw})


def test_fp_run_writes_its_outputs(teacher):
    out, summary = teacher
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == list(range(6))
    assert summary["top1"] == lines[-1]["top1"] and summary["best_top1"] == max(
        x["top1"] for x in lines)
    assert summary["top1"] > 85  # the small CNN really learns the digits
    # warm-up then cosine: the learning rate rises, then falls
    lrs = [x["lr"] for x in lines]
    assert lrs[0] < lrs[1] and lrs[1] > lrs[-1]
    state = torch.load(out / "model.pt", weights_only=True)
    assert "classifier.weight" in state
    assert summary["model_sha256"] == sha256_of(out / "model.pt")
    for key in ("scoring_s", "selection_s", "train_s", "eval_s", "wall_s"):
        assert summary[key] >= 0


def test_qat_run_scores_selects_and_logs_times(teacher, tmp_path):
    t_dir, _ = teacher
    summary = run_training(_qat(t_dir), tmp_path)
    rounds = sorted(p.name for p in (tmp_path / "scores").iterdir())
    assert rounds == ["epoch_0000.parquet", "epoch_0002.parquet"]
    index = read_index(tmp_path / "index.parquet")
    assert sorted(set(index.column("epoch").to_pylist())) == [0, 1, 2, 3]
    ids0, _ = epoch_rows(index, 0)
    ids1, _ = epoch_rows(index, 1)
    assert np.array_equal(ids0, ids1) and abs(len(ids0) - 0.3 * 1437) <= 10
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["scoring_s"] > 0 for x in lines] == [True, False, True, False]
    assert all(x["subset_size"] == len(ids0) for x in lines)
    scores = pq.read_table(tmp_path / "scores" / "epoch_0002.parquet")
    assert scores.column("ds").null_count == 0  # the teacher is the reference
    assert summary["w_bits"] == 3 and summary["top1"] > 70


def test_stop_and_resume_gives_the_same_model(teacher, tmp_path):
    t_dir, _ = teacher
    cfg = _qat(t_dir, method="random_epoch")
    full = run_training(cfg, tmp_path / "a")
    assert run_training(cfg, tmp_path / "b", stop_after=1) is None
    assert run_training(cfg, tmp_path / "b", resume=True, stop_after=2) is None
    resumed = run_training(cfg, tmp_path / "b", resume=True)
    assert resumed["top1"] == full["top1"]
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))
    assert (tmp_path / "a" / "index.parquet").read_bytes() != b""
    ia, ib = read_index(tmp_path / "a" / "index.parquet"), read_index(tmp_path / "b" / "index.parquet")
    assert ia.select(["epoch", "sample_id"]).equals(ib.select(["epoch", "sample_id"]))


def _final_model_preds(run_dir, w_bits=3, a_bits=3):
    """Argmax of the run's saved model on the training split, in sample order."""
    from coreset_curate.data import default_transforms, load_data
    from coreset_curate.tasks.classification.models import create_model
    from coreset_curate.quant import quantize_model
    from coreset_curate.training import load_checkpoint
    from coreset_curate.training import predict_logits

    train = load_data("digits", "train")
    _, eval_tf = default_transforms(train)
    model = create_model("small_cnn", num_classes=train.num_classes,
                         in_channels=train.image_shape[0])
    quantize_model(model, w_bits, a_bits)
    load_checkpoint(model, run_dir / "model.pt")
    return predict_logits(model, train, eval_tf).argmax(1).numpy(), train.sample_ids


def test_score_final_scores_the_finished_model(teacher, tmp_path):
    t_dir, _ = teacher
    summary = run_training(_qat(t_dir, method="random_epoch", score_final=True), tmp_path / "a")
    # random_epoch reads no scores, so the only round is the finished model's
    assert sorted(p.name for p in (tmp_path / "a" / "scores").iterdir()) == ["epoch_0004.parquet"]
    table = pq.read_table(tmp_path / "a" / "scores" / "epoch_0004.parquet")
    assert set(table.column("epoch").to_pylist()) == {4}
    preds, ids = _final_model_preds(tmp_path / "a")
    assert np.array_equal(table.column("sample_id").to_numpy(), ids)
    assert np.array_equal(table.column("pred").to_numpy(), preds)  # the model after epoch 4
    assert summary["scoring_s"] > 0
    # a finished run resumed with score_final gains the round; its model stays as it was
    cfg = _qat(t_dir, method="random_epoch")
    run_training(cfg, tmp_path / "b")
    before = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert not (tmp_path / "b" / "scores" / "epoch_0004.parquet").exists()
    run_training(_qat(t_dir, method="random_epoch", score_final=True), tmp_path / "b",
                 resume=True)
    after = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before if torch.is_tensor(before[k]))
    again = pq.read_table(tmp_path / "b" / "scores" / "epoch_0004.parquet")
    assert np.array_equal(again.column("pred").to_numpy(), _final_model_preds(tmp_path / "b")[0])
    with pytest.raises(ValueError, match="score_final must be true or false"):
        load_recipe(None, ["score_final=maybe"])


def test_eval_epochs_evaluates_only_there_and_at_the_end(teacher, tmp_path):
    t_dir, _ = teacher
    summary = run_training(_qat(t_dir, eval_epochs=[2]), tmp_path)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # epochs 2 and 4 (counted from 1) are evaluated, the others log no accuracy
    assert ["top1" in x for x in lines] == [False, True, False, True]
    assert summary["top1"] == lines[3]["top1"]
    assert summary["best_top1"] == max(lines[1]["top1"], lines[3]["top1"])
    assert "best_top1" not in lines[0] and lines[1]["best_top1"] == lines[1]["top1"]
    with pytest.raises(ValueError, match="eval_epochs must be a list of epochs between 1 and"):
        _qat(t_dir, eval_epochs=[0, 5])


def test_recipe_errors_are_clear(tmp_path, teacher):
    with pytest.raises(ValueError, match="unknown recipe key.*'epoch'.*accepted keys"):
        load_recipe(None, ["epoch=3"])
    with pytest.raises(ValueError, match="teacher=PATH"):
        load_recipe(None, ["mode=qat"])
    with pytest.raises(ValueError, match="unknown method 'best'"):
        load_recipe(None, ["method=best"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("- not a mapping\n")
    with pytest.raises(ValueError, match="mapping"):
        load_recipe(recipe)
    t_dir, _ = teacher
    with pytest.raises(ValueError, match="sha256"):
        run_training(_qat(t_dir, teacher_sha256="0" * 64), tmp_path / "x")
    with pytest.raises(ValueError, match="does not fit model"):
        run_training(_qat(t_dir, model_kwargs={"width": 8}), tmp_path / "y")


def test_pickled_checkpoint_is_refused_without_running_it(teacher, tmp_path):
    import pickle

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "evil.pt"
    bad.write_bytes(pickle.dumps({"model": Evil()}))
    t_dir, _ = teacher
    with pytest.raises(ValueError, match="weights-only"):
        run_training(_qat(t_dir, teacher=str(bad)), tmp_path / "z")
    assert not marker.exists()


def test_cli_train_refuses_a_used_folder(teacher, tmp_path, capsys):
    t_dir, _ = teacher
    assert main(["train", "--set", "data=digits", "--set", "model=small_cnn",
                 "--set", "epochs=1", "--set", "channels_last=false", "--out", str(t_dir)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_recipes_inherit_with_base(tmp_path):
    (tmp_path / "a.yaml").write_text("data: digits\nmodel: small_cnn\nepochs: 7\nlr: 0.2\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nlr: 0.05\n")
    cfg = load_recipe(tmp_path / "b.yaml", ["epochs=3"])
    assert (cfg.model, cfg.lr, cfg.epochs) == ("small_cnn", 0.05, 3)
    (tmp_path / "c.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ValueError, match="inherits from itself"):
        load_recipe(tmp_path / "c.yaml")


def test_shipped_recipes_load():
    from pathlib import Path

    from coreset_curate.selection.core import check_request

    recipes = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))
    assert len(recipes) >= 19
    # curate recipes are checked in test_detection_train's test of every shipped recipe
    for path in (p for p in recipes if not p.name.endswith("_curate.yaml")):
        cfg = load_recipe(path)
        assert cfg.data and cfg.model
        if path.name.startswith("cifar10_resnet20_w") and "_rho_" not in path.name:
            # the CPU table's recipes
            assert cfg.mode == "qat" and cfg.epochs == 12 and cfg.reselect_every == 4
        if "_rho_" in path.name:  # the equal-cost benchmark's rows: every epoch, free
            assert cfg.method == "rho" and cfg.free_scores and cfg.reselect_every == 1
            assert cfg.epochs == 12 and cfg.fraction == 0.1
            # the options are the method's own (a misspelt one would only fail at the
            # run's first selection)
            opts = check_request(cfg.method, cfg.fraction, 0, 0, cfg.method_options)
            assert opts["unseen"] in ("first", "mean") and opts["uniform"] == 0.2


@pytest.mark.parametrize("n,batch,world", [(1000, 128, 2), (37, 8, 3), (5, 4, 4)])
def test_rank_plans_cover_each_position_once_with_equal_steps(n, batch, world):
    from coreset_curate.training import rank_plan

    positions = np.arange(100, 100 + n)
    plans = [rank_plan(positions, batch, r, world, torch.Generator().manual_seed(7))
             for r in range(world)]
    assert len({len(p) for p in plans}) == 1  # every rank runs the same number of steps
    real = [int(x) for p in plans for part, w in p for x, wt in zip(part, w) if wt > 0]
    assert sorted(real) == positions.tolist()  # disjoint, and together the whole subset
    for step in zip(*plans):  # each global batch is at most `batch` real samples
        assert sum(int((w > 0).sum()) for _, w in step) <= batch


def test_torchrun_two_gloo_ranks_train_one_short_epoch(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "CORESET_CURATE_PROGRESS": "0", "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    out = tmp_path / "ddp"
    args = ["train", "--set", "data=digits", "--set", "model=small_cnn", "--set", "epochs=1",
            "--set", "channels_last=false", "--set", "limit_train=300", "--set", "batch_size=32",
            "--set", "method=random_epoch", "--set", "fraction=0.5", "--out", str(out)]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node=2", "-m", "coreset_curate", *args], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["top1"] > 10
    lines = (out / "metrics.jsonl").read_text().splitlines()
    ids, _ = epoch_rows(read_index(out / "index.parquet"), 0)
    assert abs(len(ids) - 150) <= 5  # half of every class, rounded per class
    assert len(lines) == 1 and json.loads(lines[0])["subset_size"] == len(ids)


def test_resume_refuses_other_settings(teacher, tmp_path):
    t_dir, _ = teacher
    cfg = _qat(t_dir, method="random_epoch", epochs=2)
    assert run_training(cfg, tmp_path / "r", stop_after=1) is None
    other = _qat(t_dir, method="random_epoch", epochs=2, fraction=0.5)
    with pytest.raises(ValueError, match=r"\['fraction'\] differ"):
        run_training(other, tmp_path / "r", resume=True)
    done = run_training(_qat(t_dir, method="random_epoch", epochs=2, eval_batch_size=100),
                        tmp_path / "r", resume=True)
    assert done is not None and done["epochs"] == 2


def test_step_lr_8bit_gives_the_8bit_steps_their_own_rate():
    from coreset_curate.tasks.classification.models import create_model
    from coreset_curate.quant import LsqQuantizer, quantize_model
    from coreset_curate.training.schedule import build_optimizer as _optimizer

    torch.manual_seed(0)
    x = torch.randn(32, 1, 8, 8)
    y = torch.randint(0, 10, (32,))
    model = quantize_model(create_model("small_cnn", num_classes=10, in_channels=1), 3, 3,
                           first_last="int8", calibration=[x])
    quantizers = [m for m in model.modules() if isinstance(m, LsqQuantizer)]
    by_bits = {b: [q.step for q in quantizers if q.bits == b] for b in (3, 8)}
    assert len(by_bits[8]) == 4 and len(by_bits[3]) == 2  # first conv and fc: 8 bits
    cfg = TrainConfig(**{**BASE, "mode": "fp", "step_lr": 0.05, "step_lr_8bit": 0.0})
    opt = _optimizer(model, cfg)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert {lr_of[id(p)] for p in by_bits[8]} == {0.0}
    assert {lr_of[id(p)] for p in by_bits[3]} == {0.05}
    before = {id(p): p.detach().clone() for p in by_bits[8] + by_bits[3]}
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert all(torch.equal(p, before[id(p)]) for p in by_bits[8])
    assert all(not torch.equal(p, before[id(p)]) for p in by_bits[3])
    # without the key every step size shares step_lr, as before
    groups = _optimizer(model, TrainConfig(**{**BASE, "step_lr": 0.05})).param_groups
    assert len(groups) == 3 and len(groups[2]["params"]) == 6
