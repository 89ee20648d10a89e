"""Segment every image in a folder with several prompts, keeping the model loaded, and save one COCO file.

python examples/segment_folder.py photos/ dog cat --model facebook/sam3 --out results.json
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
    args = parser.parse_args()

    client = s3seg.Client(model=args.model)  # loads SAM3 once, on the best device available
    results = []
    for path in expand_inputs([args.folder]):
        try:
            result = client.segment(path, args.prompts, threshold=args.threshold)
        except s3seg.ImageError as e:  # one bad file does not stop the run
            print(f"skipped: {e}")
            continue
        counts = {p: len(result.for_prompt(p)) for p in result.prompts}
        print(f"{path.name}: {counts} in {result.timings.total_ms:.0f} ms")
        results.append(result)
    args.out.write_text(json.dumps(s3seg.to_coco(results)))
    print(f"wrote {args.out} ({len(results)} images)")


if __name__ == "__main__":
    main()
