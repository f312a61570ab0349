"""``modelrunner example-model KIND FOLDER``: train one of the example models
(``modelrunner.example_models``) and write its bioimage.io package, to try the server with
no download."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from modelrunner.example_kinds import KINDS


def add_example_model_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    kinds = "; ".join(f"{k.name}: {k.summary}" for k in KINDS.values())
    parser = sub.add_parser(
        "example-model",
        help="train a small example model on synthetic nuclei and write its bioimage.io package",
        description="Train a small U-Net on synthetic images of nuclei (seconds, on the CPU; "
        "needs the runtime extra) and write it as a bioimage.io package that passes "
        "bioimageio.core's model test: a model to try modelrunner with, not for real data.",
    )
    parser.add_argument("kind", choices=list(KINDS), metavar="KIND", help=f"one of: {kinds}")
    parser.add_argument(
        "folder",
        type=Path,
        metavar="FOLDER",
        help="where to write the package (a new or empty folder), e.g. models/nuclei",
    )
    parser.add_argument(
        "--seed",
        type=int,
        metavar="N",
        default=0,
        help="random seed of the training images and weights (default 0: the same package "
        "each time on one machine)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar while training")
    parser.set_defaults(run=_example_model)


def _example_model(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from modelrunner.example_models import holds_example, write_example_model

    if holds_example(args.folder, args.kind):
        # the README's commands run again, or a second terminal: nothing to redo
        print(
            f"{args.folder}/ holds the {args.kind} example model already (remove it to train "
            "it again)"
        )
        return 0
    steps = KINDS[args.kind].plan.steps
    with tqdm(
        total=steps,
        desc=f"training {args.kind}",
        unit="step",
        disable=True if args.no_progress else None,
        file=sys.stderr,
    ) as bar:

        def on_step(done: int, loss: float) -> None:
            bar.update(done - bar.n)
            if done % 10 == 0:
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

        made = write_example_model(args.kind, args.folder, seed=args.seed, on_step=on_step)
    print(
        f"wrote {made.directory}/ ({args.kind}: trained {made.steps} steps in "
        f"{made.train_seconds:.1f} s; its test output finds the test image's nuclei with an "
        f"IoU of {made.test_iou:.2f})"
    )
    print(
        f"next: modelrunner add {made.directory}   (or modelrunner predict {made.directory} IMAGE)"
    )
    return 0
