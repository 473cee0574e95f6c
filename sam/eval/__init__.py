"""Evaluation: generate answers for `Example`s in batches and score them per task, beside baselines on the same items.

Scoring follows the protocols of LTU and SAM:
- classification: the generated text and "sound of <class>" for every class are embedded with a text
  encoder and compared by cosine (`text_encoders`), giving per-class scores -> mAP, top-1 accuracy and
  micro-F1 (`metrics.classification_metrics`); a second protocol reads class names verbatim from the text.
- caption / open: coco-caption metrics against every reference of the clip (`metrics.caption_metrics`).
- reasoning: MMAU's string-match rule (`metrics.mmau_string_match`), accuracy per metadata group; and,
  as a second protocol, the most likely choice under the model (`choices.choice_likelihoods`).
- closed: answer equality after lowercasing and dropping punctuation.
Baselines on the same test items and bootstrap CIs over its clips come from `baselines` and `annotate`.

Modules: `generation` (batched answers) -> `scoring` (per-task scores) -> `annotate` (baselines and CIs
beside them); `metrics` and `baselines` are pure functions of arrays and strings. A failure is never
hidden as a score: items whose audio cannot be loaded or whose batch fails are listed with their error.
"""

from sam.data.types import label_matrix
from sam.eval.choices import choice_likelihoods, score_choice_likelihoods
from sam.eval.generation import Generate, default_audio_loader, generate_predictions
from sam.eval.metrics import mmau_string_match
from sam.eval.scoring import GROUP_KEYS, evaluate_examples, score_predictions
from sam.eval.text_encoders import (
    LABEL_PREFIX,
    CachedEncoder,
    ClapTextEncoder,
    SentenceEncoder,
    TextClassifier,
    TextEncoder,
    make_text_encoder,
)

__all__ = [
    "GROUP_KEYS",
    "LABEL_PREFIX",
    "CachedEncoder",
    "ClapTextEncoder",
    "Generate",
    "SentenceEncoder",
    "TextClassifier",
    "TextEncoder",
    "choice_likelihoods",
    "default_audio_loader",
    "evaluate_examples",
    "generate_predictions",
    "label_matrix",
    "make_text_encoder",
    "mmau_string_match",
    "score_choice_likelihoods",
    "score_predictions",
]
