"""What the built-in model can answer, and the sentence it says otherwise (no torch).

The model only knows pictures of coloured shapes and the task's questions about them
(:mod:`.tasks`). Greedy decoding always produces one of its answer words, so a question
outside the task ("hello, who are you?", or a question without a picture) would get a
confident colour or yes/no. Such a question is answered with :data:`REFUSAL` instead,
without running the model.
"""

from __future__ import annotations

from mmo_serving.model.tokenizer import WordTokenizer

REFUSAL = (
    "I can only answer questions about the shapes in an attached picture: their colours, "
    "kinds and number, and whether a given shape is there."
)


def refusal_reason(tokenizer: WordTokenizer, question: str, has_image: bool) -> str | None:
    """Why the question is outside the task, or None when the model can answer it.

    Outside: no words, a word the tokenizer does not know (the model never saw it), or no
    picture (every question of the task is about one)."""
    words = tokenizer.words(question)
    if not words:
        return "no question"
    unknown = sorted({w for w in words if w not in tokenizer.index})
    if unknown:
        return "words the model does not know: " + ", ".join(unknown)
    if not has_image:
        return "no picture"
    return None
