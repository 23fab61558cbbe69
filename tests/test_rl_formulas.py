"""The RL formulas against hand-computed cases: GRPO advantages, the clipped policy loss with the
dual clip, the KL estimators, and CodeVision's answer, format and tool rewards."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codevision_jax.rl import advantages, loss, reward


# ---- advantages ------------------------------------------------------------------------------------


def test_grpo_normalises_within_groups():
  scores = np.array([1.0, 0.0, 1.0, 0.0, 3.0, 2.0, 2.0], np.float32)
  groups = np.array([7, 7, 7, 7, 3, 9, 9])
  adv = advantages.grpo(scores, groups)
  # Group 7: mean 0.5, unbiased std sqrt(1/3); a group of one: mean 0, std 1; equal scores: 0.
  half = 0.5 / (np.sqrt(1 / 3) + 1e-6)
  np.testing.assert_allclose(adv, [half, -half, half, -half, 3 / (1 + 1e-6), 0, 0], rtol=1e-6)
  np.testing.assert_allclose(advantages.grpo(scores, groups, scale_by_std=False), [0.5, -0.5, 0.5, -0.5, 3.0, 0.0, 0.0])
  np.testing.assert_allclose(
    advantages.ESTIMATORS["dr_grpo"](scores, groups), advantages.grpo(scores, groups, scale_by_std=False)
  )


def test_grpo_on_jax_arrays_and_under_jit():
  scores = jnp.asarray([1.0, 0.0, 1.0, 0.0])
  got = jax.jit(advantages.grpo)(scores, jnp.asarray([0, 0, 1, 1]))
  assert isinstance(got, jax.Array)
  half = 0.5 / (np.sqrt(0.5) + 1e-6)  # mean 0.5, unbiased std sqrt(0.5)
  np.testing.assert_allclose(got, [half, -half] * 2, rtol=1e-6)


# ---- the policy loss and KL ----------------------------------------------------------------------


def test_policy_loss_clip_higher_and_dual_clip():
  old = np.zeros((1, 5), np.float32)
  new = np.array([[0.5, 2.5, -0.5, 0.0, 9.0]], np.float32)
  adv = np.array([[1.0, -1.0, -1.0, 2.0, 5.0]], np.float32)
  mask = np.array([[1, 1, 1, 1, 0]])  # The last token carries no loss.
  pg, m = loss.policy_loss(new, old, adv, mask, clip_low=0.2, clip_high=0.28, clip_c=10.0)
  # Token 0: A>0, ratio e^0.5 > 1.28: clipped to -1.28. Token 1: A<0, ratio e^2.5 = 12.18, the
  # clipped branch gives 12.18, the dual clip caps it at 10. Token 2: A<0, ratio e^-0.5 = 0.61
  # below 0.8: clipped to 0.8. Token 3: ratio 1: -2.
  np.testing.assert_allclose(pg, (-1.28 + 10.0 + 0.8 - 2.0) / 4, rtol=1e-6)
  # Clipped means the clipped branch is the larger loss (tokens 0 and 2; token 1's clipped
  # branch is the smaller one, and then the dual clip binds).
  np.testing.assert_allclose(m["clipfrac"], 2 / 4)
  np.testing.assert_allclose(m["clipfrac_lower"], 1 / 4)  # token 1
  np.testing.assert_allclose(m["approx_kl"], -(0.5 + 2.5 - 0.5) / 4, rtol=1e-6)
  # One advantage per sequence broadcasts over its tokens; jax in, jax out.
  pg_seq, _ = loss.policy_loss(jnp.asarray(new), old, jnp.asarray([2.0]), mask)
  assert isinstance(pg_seq, jax.Array)
  # A = 2 everywhere: ratios above 1.28 are clipped; e^-0.5 (below 0.8) is not, for A > 0.
  np.testing.assert_allclose(pg_seq, np.mean([-2 * 1.28, -2 * 1.28, -2 * np.exp(-0.5), -2.0]), rtol=1e-6)
  # The log-ratio is clamped to [-20, 20].
  huge, _ = loss.policy_loss(np.array([[50.0]]), np.array([[0.0]]), np.array([[-1.0]]), np.array([[1]]), clip_c=1e9)
  np.testing.assert_allclose(huge, np.exp(20.0), rtol=1e-6)
  with pytest.raises(ValueError, match="dual-clip"):
    loss.policy_loss(new, old, adv, mask, clip_c=1.0)


def test_kl_estimators():
  logp, ref = np.array([[-1.0, -2.0]]), np.array([[-1.5, -2.0]])
  np.testing.assert_allclose(loss.kl_penalty(logp, ref, "kl"), [[0.5, 0.0]])
  np.testing.assert_allclose(loss.kl_penalty(logp, ref, "mse"), [[0.125, 0.0]])
  np.testing.assert_allclose(loss.kl_penalty(logp, ref, "low_var_kl"), [[np.exp(-0.5) + 0.5 - 1.0, 0.0]], rtol=1e-6)
  # ref - logp = -40 is clamped to -20; e^-20 + 20 - 1 = 19 is clamped to 10.
  assert float(loss.kl_penalty(np.array([0.0]), np.array([-40.0]))[0]) == 10.0
  with pytest.raises(ValueError, match="low_var_kl"):
    loss.kl_penalty(logp, ref, "k9")


# ---- answers and format --------------------------------------------------------------------------


@pytest.mark.parametrize(
  "text, expected",
  [
    ("<think>hm</think><answer> 42 </answer>", "42"),
    ("<answer>1</answer> then <answer>2</answer>", "2"),
    ("<think>x</think>\n<answer>B", "B"),
    ("<tool_response>\n<answer>7</answer>\n</tool_response>\nso the word is\nPENCIL", "PENCIL"),
    ("   ", None),
    ("\n".join(["line"] * 500), None),
  ],
)
def test_extract_answer(text, expected):
  assert reward.extract_answer(text) == expected


@pytest.mark.parametrize(
  "prediction, truth, expected",
  [
    ("3.0", "3", True),
    ("PENCIL", "PENCIL", True),
    ("pencil", "PENCIL", False),
    ("The answer is (b).", "B", True),
    ("a", "A", True),
    ("A or C", "B", False),
    ("0.75", "3/4", True),
    ("0.7501", "3/4", True),
    ("0.76", "3/4", False),
    ("3/4", "0.75", False),  # a fraction in the prediction is not read as one: its last number is 4
    ("about 42 apples", "42", True),
    ("-5 degrees", "-5", True),
    ("3", "3.5", False),
    ("up", "up", True),
    ("left", "up", False),
    (None, "up", False),
    ("no number", "12", False),
  ],
)
def test_answers_match(prediction, truth, expected):
  assert reward.answers_match(prediction, truth) is expected


@pytest.mark.parametrize(
  "text, expected",
  [
    ("<think>a</think><tool_call>x</tool_call><think>b</think>\n<answer>4</answer>  ", 1.0),
    ("<think>a</think><tool_response>\n<think>\n</tool_response><answer>4</answer>", 1.0),
    ("I think <think>a</think><answer>4</answer>", 0.0),  # does not start with <think>
    ("<think>a</think></think><answer>4</answer>", 0.0),  # unbalanced
    ("<answer>4</answer>", 0.0),  # no think
    ("<think>a</think><answer>4</answer><answer>5</answer>", 0.0),  # two answers
    ("<think>a</think><answer>4</answer> and more", 0.0),  # answer does not end it
    ("<think>a <answer>4</answer></think>", 0.0),  # no answer after think
    ("<think>a <answer>4</think></answer>", 0.0),  # answer inside think
  ],
)
def test_format_reward(text, expected):
  assert reward.format_reward(text) == expected


# ---- necessity and the tool reward ----------------------------------------------------------------


def test_necessity():
  # Tool users 1 of 2 correct, tool-free 0 of 2: 0.5 to the correct tool user.
  assert reward.necessity([1, 1, 0, 0], [1, 0, 0, 0]) == [0.5, 0, 0, 0]
  # Two tool-free rollouts correct: nobody gets it.
  assert reward.necessity([1, 0, 0], [1, 1, 1]) == [0, 0, 0]
  # No tool-free rollout: 0.
  assert reward.necessity([1, 1], [1, 0]) == [0, 0]
  # One of three tool-free correct (1/3), both tool users correct (1): 2/3 each.
  np.testing.assert_allclose(reward.necessity([1, 1, 0, 0, 0], [1, 1, 1, 0, 0]), [2 / 3, 2 / 3, 0, 0, 0])


def parts(**kw):
  base = dict(
    correct=True, fmt=1.0, ops=set(), crop_boxes=[], code_calls=1, required_transforms=[], gt_bbox=[10, 10, 50, 50]
  )
  return reward.tool_reward(**{**base, **kw})


def test_tool_reward_required_crop_with_a_missed_box():
  # Required: the image was rotated 90 (undone by rotate_270) and a crop. The crop misses.
  p = parts(
    ops={"crop", "rotate_270"}, crop_boxes=[[60, 60, 90, 90]], code_calls=2, required_transforms=["crop", "rotate_90"]
  )
  assert p["r_mandatory"] == 0.5 and p["r_acc"] == 1.0 and p["r_exact"] == 0.1
  assert p["total"] == pytest.approx(1.0 + 0.1 + 0.5 + 0.1)
  # Only a crop required, box IoU 0.05 < 0.1: the right answer earns 0.05 of r_acc.
  box = [10, 10, 50, 12]  # 80 px^2 inside the 1600 px^2 target: IoU 0.05
  p = parts(ops={"crop"}, crop_boxes=[box], required_transforms=["crop"])
  assert p["r_mandatory"] == pytest.approx(0.05) and p["r_acc"] == pytest.approx(0.05)
  assert p["total"] == pytest.approx(0.05 + 0.1 + 0.05 + 0.1)
  # The best of several boxes counts; the right transform without the crop: half.
  p = parts(
    ops={"crop", "rotate_270"}, crop_boxes=[[0, 0, 5, 5], [10, 10, 50, 50]], required_transforms=["crop", "rotate_90"]
  )
  assert p["r_mandatory"] == 1.0
  p = parts(ops={"rotate_270"}, required_transforms=["crop", "rotate_90"])
  assert p["r_mandatory"] == 0.5 and p["r_exact"] == 0.0 and p["r_acc"] == 1.0


def test_tool_reward_spurious_flips_and_overuse():
  p = parts(ops={"crop", "flip_horizontal", "rotate_90"}, crop_boxes=[[10, 10, 50, 50]], required_transforms=["crop"])
  assert p["r_spurious"] == 2 and p["r_exact"] == 0.0 and p["r_mandatory"] == 1.0
  assert p["total"] == pytest.approx(1.0 + 0.1 + 1.0 - 0.5 * 2)
  # A required rotation makes rotations not spurious.
  assert parts(ops={"rotate_180", "flip_vertical"}, required_transforms=["rotate_180"])["r_spurious"] == 0
  # Five calls where max(2, |req|) = 2 are expected: c_usage 3.
  p = parts(ops={"rotate_180"}, code_calls=5, required_transforms=["rotate_180"])
  assert p["c_usage"] == 3 and p["total"] == pytest.approx(1.0 + 0.1 + 1.0 + 0.1 - 0.5 * 3)


def test_tool_reward_emerge_necessity_and_weights():
  p = parts(ops={"rotate_180", "enhance"}, required_transforms=["rotate_180"])
  assert p["r_emerge"] == 0.2 and p["r_exact"] == 0.1
  assert parts(correct=False, ops={"enhance"})["r_emerge"] == 0.0
  # No required transform: no mandatory or exact reward.
  p = parts(correct=False, fmt=0.0)
  assert p["r_mandatory"] == 0.0 and p["r_exact"] == 0.0 and p["total"] == 0.0
  # beta weighs r_necessity; gating zeroes it with r_acc.
  assert parts(necessity=0.5, weights={"beta": 2.0})["total"] == pytest.approx(1.0 + 0.1 + 1.0)
  gated = parts(ops={"crop"}, crop_boxes=[], required_transforms=["crop"], necessity=0.5, weights={"beta": 2.0})
  assert gated["r_acc"] == 0.0 and gated["r_necessity"] == 0.0
  with pytest.raises(ValueError, match="unknown reward weights"):
    parts(weights={"delta": 1.0})


def test_required_ops_invert_rotations():
  assert reward.required_ops(["rotate_90", "crop"]) == {"rotate_270", "crop"}
  assert reward.required_ops(["rotate_180", "flip_vertical"]) == {"rotate_180", "flip_vertical"}
  assert reward.required_ops(["rotate_270", "rotate_0"]) == {"rotate_90"}
  assert reward.required_ops(None) == set()
