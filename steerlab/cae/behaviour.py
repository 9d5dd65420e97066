"""Behaviour scores on Model-Written-Evaluations sets (CAA's metric, GUIDE §2), with bootstrap intervals.

For each question the model is asked in the chat template and its assistant turn is opened so the next
token is the answer:

* A/B sets (``advanced-ai-risk``): the assistant turn is prefilled with ``"("`` and the candidates are
  the letters, e.g. ``"A"`` / ``"B"``;
* Yes/No sets (``persona``): the assistant turn is empty and the candidates are ``"Yes"`` / ``"No"``
  (SmolLM2 tokenizes both as single tokens right after the template's ``"assistant\\n"``).

Behaviour score of an item = p(matching) / (p(matching) + p(not matching)) from the next-token
distribution; the set's score is the mean over items, with a percentile-bootstrap 95% interval. The
*effect* of a setting is the per-item difference steered − unsteered, averaged, with its own
bootstrap interval (items are paired). All probabilities come from `steerlab.engine.score`, so many
steering settings share one pass over the prompts.

Where steering goes ("answer" positions, the default): CAA's "after_user" policy of `steerlab.steer`,
from the first token after the user's message on (the end-of-turn token, the assistant header, the
prefilled ``"("`` of A/B items and every later token), so the token whose logits give the answer is
steered for A/B and Yes/No items alike. (Before "after_user" included the header, "answer" added the
last prompt token for Yes/No items by hand; that term would now count twice.) ``"all"``,
``"after_user"`` and ``"last_prompt"`` are available as they are in `steerlab.steer`.

Each job has its own module; this one gathers their public names:
`behaviour_data` (loading and splitting), `prompts` (the answer-predicting prompt and candidates),
`strengths` (position policies, settings, relative strengths), `stats` (bootstrap intervals),
`scoring` (scores and effects), `readings` (training activations) and `verdicts` (sign checks).
"""

from .behaviour_data import BehaviourData, load_behaviour
from .prompts import behaviour_candidates, behaviour_prompt, scoring_items
from .readings import (DEFAULT_YESNO_READING, READINGS, closing_text, default_reading, reading_activations,
                       reading_items, train_activations)
from .scoring import BehaviourResult, SettingScore, score_behaviour, summarize
from .stats import balanced_bootstrap_ci, bootstrap_ci
from .strengths import (POSITION_POLICIES, behaviour_setting, direction_norm, pair_residual_norms, raw_strength,
                        residual_norms, steering_terms)
from .verdicts import sign_check, sign_verdict

__all__ = ["BehaviourData", "load_behaviour", "behaviour_candidates", "behaviour_prompt", "scoring_items",
           "DEFAULT_YESNO_READING", "READINGS", "closing_text", "default_reading", "reading_activations",
           "reading_items", "train_activations", "BehaviourResult", "SettingScore", "score_behaviour", "summarize",
           "balanced_bootstrap_ci", "bootstrap_ci", "POSITION_POLICIES", "behaviour_setting", "direction_norm",
           "pair_residual_norms", "raw_strength", "residual_norms", "steering_terms", "sign_check", "sign_verdict"]
