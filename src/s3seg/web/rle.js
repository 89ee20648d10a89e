// COCO compressed RLE (pycocotools' string form) decoded in the browser.
// A mask is runs of 0s and 1s over the pixels in column-major order (down each column, then the
// next column), starting with a run of 0s.

/** pycocotools rleFrString: the counts string → run lengths. */
export function decodeCounts(text) {
  const counts = [];
  let p = 0;
  while (p < text.length) {
    let x = 0;
    let k = 0;
    let more = true;
    while (more) {
      const c = text.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      p += 1;
      k += 1;
      if (!more && (c & 0x10) !== 0) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

/** Runs as given (a list) or compressed (a string) → the pixel indices (row-major) inside the mask. */
export function maskPixels(segmentation) {
  const [height, width] = segmentation.size;
  const counts = typeof segmentation.counts === "string" ? decodeCounts(segmentation.counts) : segmentation.counts;
  let total = 0;
  for (let i = 1; i < counts.length; i += 2) total += counts[i];
  const pixels = new Uint32Array(total);
  let at = 0;
  let n = 0;
  for (let i = 0; i < counts.length; i++) {
    if (i % 2 === 1) {
      for (let j = at; j < at + counts[i]; j++) {
        const x = Math.floor(j / height);
        pixels[n++] = (j - x * height) * width + x;
      }
    }
    at += counts[i];
  }
  if (at !== width * height) throw new Error(`RLE covers ${at} pixels, the mask has ${width * height}`);
  return pixels;
}
