"""Segment every image in a folder with several prompts, keeping the model loaded, and save one COCO file.

python examples/segment_folder.py photos/ dog cat --model facebook/sam3 --out results.json

With --masks DIR, each image's COCO JSON, mask PNG and overlay are written there too (as `s3seg segment`
does). A file that cannot be read, or an image that fails on its own, is skipped; the others go on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import s3seg
from s3seg.images import expand_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("prompts", nargs="+")
    parser.add_argument("--model", default=None, help="Hub id, local directory or sam3.pt")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=Path("results.json"))
    parser.add_argument("--masks", type=Path, default=None, help="also write per-image files here")
    args = parser.parse_args()

    client = s3seg.Client(model=args.model)  # loads SAM3 once, on the best device available
    request = client.request(args.prompts, threshold=args.threshold)  # checked before the model loads
    results = []
    for outcome in client.segment_paths(expand_inputs([args.folder]), request, out=args.masks):
        if outcome.result is None:  # one bad file does not stop the run
            print(f"skipped {outcome.image}: {outcome.error}")
            continue
        result = outcome.result
        counts = {p: len(result.for_prompt(p)) for p in result.prompts}
        print(f"{Path(outcome.image).name}: {counts} in {result.timings.total_ms:.0f} ms")
        results.append(result)
    args.out.write_text(json.dumps(s3seg.to_coco(results)))
    print(f"wrote {args.out} ({len(results)} images)")


if __name__ == "__main__":
    main()
