"""codevision-jax: Qwen-VL models that think with images through code, in JAX/Flax NNX.

The public API:

    import codevision_jax as cvj
    model = cvj.load_hf(path, dtype="float32")
    logits = model(input_ids, pixel_values=pv, image_grid_thw=thw, attention_mask=mask)
    cvj.save_hf(model, out_dir)
    pv, thw = cvj.preprocess_images([pil_image, ...], min_pixels=..., max_pixels=...)
"""

import importlib

# Names resolved lazily so that `import codevision_jax` stays cheap (no JAX import for the
# data or executor-client code paths).
_EXPORTS = {
  "load_hf": "codevision_jax.hf.load",
  "save_hf": "codevision_jax.hf.save",
  "preprocess_images": "codevision_jax.processing.image",
  "smart_resize": "codevision_jax.processing.image",
  "generate": "codevision_jax.sampling.sampler",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module 'codevision_jax' has no attribute {name!r}")
