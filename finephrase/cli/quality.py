"""``finephrase quality train`` and ``finephrase quality score``: a thin layer over :mod:`finephrase.quality`."""

from __future__ import annotations

import json
import sys


def cmd_train(args) -> int:
    from finephrase.quality.train import TrainSettings, train_classifier

    settings = TrainSettings(valid_fraction=args.valid_fraction, seed=args.seed, epoch=args.epoch,
                             quantize=not args.no_quantize, max_per_label=args.max_per_label)
    result = train_classifier(args.positive, args.negative, args.output, settings)
    print(f"trained on {result.examples['hq']} hq + {result.examples['lq']} lq documents "
          f"(learning rate {result.learning_rate}); held out {result.held_out} (accuracy {result.accuracy:.3f}):")
    for label, s in result.labels.items():
        print(f"  __label__{label}: precision {s.precision:.3f}  recall {s.recall:.3f}  F1 {s.f1:.3f}  "
              f"({s.support} held out)")
    print(f"model: {result.model}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result.to_dict(), f, indent=2)
    return 0


def cmd_score(args) -> int:
    from finephrase.quality.models import resolve_classifier
    from finephrase.quality.score import score_corpus

    report = score_corpus(resolve_classifier(args.model), args.input, label=args.label, limit=args.limit)
    if not report.scores:
        print(f"{args.input}: no documents to score", file=sys.stderr)
        return 1
    for line in report.lines(args.threshold):
        print(line)
    return 0


def register(sub) -> None:
    p = sub.add_parser("quality", help="train a fastText quality classifier, or see how one (fastText or transformers) scores a corpus")
    qsub = p.add_subparsers(dest="quality_command", required=True)

    t = qsub.add_parser("train", help="train a classifier the DCLM way (__label__hq vs __label__lq)")
    t.add_argument("--positive", required=True, help="high-quality documents: .jsonl(.gz) / .parquet / .txt, or a folder")
    t.add_argument("--negative", required=True, help="low-quality documents, same formats")
    t.add_argument("--output", required=True, help="the model file to write (.ftz when quantised, else .bin)")
    t.add_argument("--valid-fraction", type=float, default=0.1, help="held-out share for precision/recall/F1")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epoch", type=int, default=25)
    t.add_argument("--max-per-label", type=int, help="read at most this many documents of each label")
    t.add_argument("--no-quantize", action="store_true", help="write the full .bin model")
    t.add_argument("--json", help="also write the metrics to this JSON file")
    t.set_defaults(func=cmd_train)

    s = qsub.add_parser("score", help="the score distribution of a corpus and what thresholds keep")
    s.add_argument("model", help="a local .bin/.ftz, or a Hub model repo (org/name[/file])")
    s.add_argument("input", help=".jsonl(.gz) / .parquet / .txt, or a folder")
    s.add_argument("--label", default="hq")
    s.add_argument("--threshold", type=float, nargs="+", default=[0.5], help="thresholds to report")
    s.add_argument("--limit", type=int, help="score at most this many documents")
    s.set_defaults(func=cmd_score)
