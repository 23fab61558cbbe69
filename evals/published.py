"""Published accuracies (%) for the eval report, from the CodeVision paper (arXiv 2512.03746).

`PUBLISHED[suite]` is a list of (model, setting, accuracy): setting "average" is the mean over
upright and the five transforms (the paper's orientation-robustness number), a transform name is
that transform alone, and "as published" is the benchmark as released (no transform added).
The report prints them beside ours, labelled as published; they were measured on the full
benchmarks with the paper's models, so they compare with a run only on the same suite, model and
settings.
"""

PUBLISHED = {
  "ocrbench": [
    ("Qwen2.5-VL-7B", "none", 86.4),
    ("Qwen2.5-VL-7B", "flip_horizontal", 32.4),
    ("Qwen2.5-VL-7B", "flip_vertical", 17.0),
    ("Qwen2.5-VL-7B", "average", 56.0),
    ("CodeVision-7B", "average", 73.4),
    ("Qwen3-VL-8B-Thinking", "average", 52.2),
    ("CodeVision-8B", "average", 75.4),
  ],
  "chartqapro": [
    ("Qwen2.5-VL-7B", "average", 24.4),
    ("CodeVision-7B", "average", 31.7),
    ("Qwen3-VL-8B-Thinking", "average", 29.5),
    ("CodeVision-8B", "average", 40.7),
  ],
  "vstar": [
    ("Qwen2.5-VL-7B", "as published", 74.6),
    ("CodeVision-7B", "as published", 83.7),
    ("CodeVision-8B", "as published", 82.4),
  ],
  "hrbench4k": [
    ("Qwen2.5-VL-7B", "as published", 69.4),
    ("CodeVision-7B", "as published", 75.6),
    ("CodeVision-8B", "as published", 77.1),
  ],
  "hrbench8k": [
    ("Qwen2.5-VL-7B", "as published", 67.5),
    ("CodeVision-7B", "as published", 72.2),
    ("CodeVision-8B", "as published", 73.4),
  ],
  "mvtoolbench": [
    ("Qwen2.5-VL-7B", "as published", 18.1),
    ("CodeVision (SFT stage only)", "as published", 26.6),
    ("CodeVision-7B", "as published", 60.1),
    ("CodeVision-8B", "as published", 62.7),
  ],
}
