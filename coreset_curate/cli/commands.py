"""What each command does: thin wrappers that load, call the library and print."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("coreset_curate")


def _cmd_audit(args: argparse.Namespace) -> int:
    from ..labels.audit import audit
    from ..data import load_data

    if args.labels and not args.data:
        raise ValueError("--labels applies to --data: name the dataset the scores came from")
    data = (load_data(args.data, args.split, id_column=args.id_column, stream=args.stream,
                      labels=args.labels) if args.data else None)
    result = audit(args.scores, data=data, suspicion=args.suspicion, count=args.count,
                   true_labels=args.true_labels, index=args.index)
    paths = result.write(args.out, data=data, overwrite=args.overwrite,
                         max_examples=args.max_examples)
    kinds = result.kind_counts()
    n = result.table.num_rows
    line = (f"{result.num_flagged} of {n} samples flagged ({100 * result.num_flagged / n:.2f}%): "
            f"{kinds['mislabeled']} mislabeled, {kinds['fragile']} fragile, "
            f"{kinds['ambiguous']} ambiguous")
    if result.metrics:
        m = result.metrics["flag"]
        auroc = "-" if m["auroc"] is None else f"{m['auroc']:.4f}"
        line += (f"; against true labels: precision {m['precision']:.4f}, recall "
                 f"{m['recall']:.4f}, F1 {m['f1']:.4f}, AUROC {auroc}")
    print(line)
    print(f"wrote {paths['html']}, {paths['markdown']}, {paths['table']}")
    return 0


def _cmd_clean(args: argparse.Namespace) -> int:
    import numpy as np

    from ..labels.cleaning import clean_labels

    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    if not kinds:
        raise ValueError("--kinds names no flag kind (e.g. mislabeled,unknown)")
    cleaned = clean_labels(args.audit, relabel=args.relabel, kinds=kinds, labels=args.labels)
    if args.data:  # the table must fit the dataset it will be read with
        from ..data import load_data

        fitted = load_data(args.data, args.split, id_column=args.id_column, labels=cleaned)
        log.info("the table fits %s: %d samples kept", args.data, len(fitted))
    path = cleaned.write(args.out, overwrite=args.overwrite)
    meta = cleaned.metadata
    line = (f"wrote {path}: {meta['flagged']} flagged ({'/'.join(kinds)}), "
            f"{meta['relabeled']} relabeled, {meta['dropped']} left out, "
            f"{len(cleaned)} samples labeled")
    if cleaned.true_labels is not None:
        line += (f"; wrong labels among them: {int((cleaned.labels != cleaned.true_labels).sum())}"
                 f" ({100 * float(np.mean(cleaned.labels != cleaned.true_labels)):.2f}%)")
    print(line)
    return 0


def _cmd_noise(args: argparse.Namespace) -> int:
    from ..data import load_data
    from ..labels.noise import inject_noise

    data = load_data(args.data, args.split, id_column=args.id_column)
    noise = inject_noise(data.labels.numpy(), args.rate, args.type, seed=args.seed,
                         num_classes=data.num_classes, class_names=data.class_names)
    path = noise.write(args.out, data.sample_ids, fingerprint=data.fingerprint,
                       overwrite=args.overwrite)
    print(f"wrote {path}: {int(noise.flipped.sum())} of {len(data)} labels flipped "
          f"({args.type}, rate {args.rate}, seed {args.seed})")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from pathlib import Path

    import pyarrow.parquet as pq

    from ..data import inference_batch_size, load_data
    from ..tasks import score_checkpoint, task_of
    from ..training.recipe import parse_assignments

    if Path(args.out).exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} exists; pass --overwrite to replace it")
    view = ({"stream": True, "crop_size": args.crop_size, "resize_size": args.resize_size,
             "num_workers": args.workers} if args.stream else {})
    if not args.stream and (args.crop_size or args.resize_size or args.workers is not None):
        raise ValueError("--crop-size, --resize-size and --workers apply to --stream")
    data = load_data(args.data, args.split, id_column=args.id_column, labels=args.labels,
                     **view)
    stats = (None if args.normalize_from == args.split
             else lambda: load_data(args.data, args.normalize_from, **view))
    path = score_checkpoint(
        data, args.model, args.checkpoint, args.out, w_bits=args.w_bits, a_bits=args.a_bits,
        first_last=args.first_last, reference=args.reference, epoch=args.epoch,
        batch_size=args.batch_size or inference_batch_size(args.device), device=args.device,
        mean=args.mean, std=args.std, stats=stats, shard_rows=args.shard_rows,
        embeddings=args.embeddings, probs=args.probs, bf16=args.bf16,
        channels_last=args.channels_last, cache_dir=args.cache_dir,
        model_kwargs=parse_assignments(args.model_kwargs, "--model-kwargs"),
        overwrite=args.overwrite)
    if path is not None:
        task = task_of(data)
        print(f"wrote {path}: "
              + task.describe_table(pq.read_table(path, columns=list(task.summary_columns))))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import json

    from ..training import load_recipe, run_training

    config = load_recipe(args.recipe, args.set)
    summary = run_training(config, args.out, resume=args.resume, overwrite=args.overwrite,
                           stop_after=args.stop_after)
    if summary is None:
        print(f"{args.out}: stopped before the end; continue with --resume")
    else:
        print(json.dumps(summary, indent=2))
    return 0


def _cmd_curate(args: argparse.Namespace) -> int:
    import json

    from ..pipeline import curate, load_curate_recipe

    summary = curate(load_curate_recipe(args.recipe, args.set), args.out,
                     overwrite=args.overwrite)
    brief = {k: v for k, v in summary.items() if k != "stages"}
    print(json.dumps(brief, indent=2))
    print(f"report: {args.out}/report.html")
    return 0


def _parse_options(items: list[str]) -> dict:
    from ..training import parse_assignments

    return parse_assignments(items, "--option")


def _cmd_select(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..common.index import add_to_index
    from ..selection import METHODS, load_rounds, select
    from ..selection.streamed import STREAMABLE

    if args.method not in METHODS:
        raise ValueError(f"unknown method {args.method!r}; registered methods: {sorted(METHODS)}")
    spec = METHODS[args.method]
    streamable = (len(args.scores) == 1 and not args.labels and args.method in STREAMABLE)
    if streamable:  # one table: select() reads it by row groups past the memory budget
        source = args.scores[0]
    else:
        source = load_rounds(args.scores, spec.columns, allow_missing=spec.partial)
        if args.labels:
            from ..labels.cleaning import restrict_rounds

            source = restrict_rounds(source, args.labels)
    chosen = select(source, args.method, args.fraction, epoch=args.epoch, epochs=args.epochs,
                    schedule=args.schedule, seed=args.seed, per_class=args.per_class,
                    min_per_class=args.min_per_class, options=_parse_options(args.option),
                    exclude=args.exclude, memory_budget=args.memory_budget)
    if streamable:
        import pyarrow.parquet as pq

        from ..common.tables import table_metadata

        pf = pq.ParquetFile(source)
        fingerprint, total = table_metadata(pf.schema_arrow).get("fingerprint"), \
            pf.metadata.num_rows
    else:
        fingerprint, total = source.fingerprint, len(source.rounds[-1]["sample_id"])
    last = args.epoch + args.reselect_every
    if args.epochs is not None:
        last = min(last, args.epochs)
    epochs = list(range(args.epoch, last))
    meta = {"method": args.method, "fraction": args.fraction, "seed": args.seed,
            "R": args.reselect_every, "schedule": args.schedule, "epochs": args.epochs,
            "per_class": args.per_class, "options": _parse_options(args.option),
            "sources": [str(Path(p).resolve()) for p in args.scores],
            "fingerprint": fingerprint,
            **({"exclude": str(Path(args.exclude).resolve())} if args.exclude else {})}
    out = Path(args.out)
    add_to_index(out, chosen, epochs, metadata=meta, replace=args.overwrite)
    log.info("epoch(s) %s: %d of %d samples (%s, fraction %s) -> %s", epochs, len(chosen),
             total, args.method, args.fraction, out)
    print(f"{out}: epochs {epochs[0]}..{epochs[-1]}, {len(chosen)} samples each")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ..data.subsets import export_subset

    path = export_subset(args.data, args.index, args.epoch, args.out, split=args.split,
                         id_column=args.id_column, overwrite=args.overwrite,
                         labels=args.labels)
    print(f"wrote {path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..selection import METHODS, SCHEDULES
    from .tasks import demo_tasks

    if args.method not in METHODS:
        raise ValueError(f"unknown method {args.method!r}; registered methods: {sorted(METHODS)}")
    if args.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {args.schedule!r}; registered: {sorted(SCHEDULES)}")
    chosen = dict(epochs=args.epochs, reselect_every=args.reselect_every,
                  fraction=args.fraction, method=args.method, schedule=args.schedule,
                  w_bits=args.w_bits, a_bits=args.a_bits, seed=args.seed)
    if args.fp_epochs is not None:
        chosen["fp_epochs"] = args.fp_epochs
    print(demo_tasks()[args.task].run_demo(args.out, chosen, args.overwrite))
    return 0
