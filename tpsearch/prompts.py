"""Prompt templates for prompt-based sentence embeddings and the official sentence normalisation.

A template is a string holding ``{sentence}``; with Token Prepending on, it also holds the
placeholder ``<PST>`` just before the sentence (inserted automatically when a user template
does not mark it). The built-in methods are those of the Token Prepending paper's code.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError

PLACEHOLDER = "<PST>"
SENTENCE_SLOT = "{sentence}"

_EOL_TAIL = f'this sentence : {PLACEHOLDER} "{SENTENCE_SLOT}"'

BUILTIN_PROMPTS: dict[str, tuple[str, ...]] = {
    "prompteol": (f'This sentence : {PLACEHOLDER} "{SENTENCE_SLOT}" means in one word:"',),
    # A query-side PromptEOL for asymmetric retrieval (documents keep their own prompt).
    "question": (f'This question : {PLACEHOLDER} "{SENTENCE_SLOT}" is answered in one word:"',),
    "pcot": (f'After thinking step by step , {_EOL_TAIL} means in one word:"',),
    "ke": (
        "The essence of a sentence is often captured by its main subjects and actions, while "
        "descriptive terms provide additional but less central details. With this in mind , "
        f'{_EOL_TAIL} means in one word:"',
    ),
    # MetaEOL: eight meta-task prompts; the embedding is the mean of the eight.
    "metaeol": (
        "In this task, you're presented with a text excerpt. Your task is to categorize the excerpt "
        "into a broad category such as 'Education', 'Technology', 'Health', 'Business', "
        "'Environment', 'Politics', or 'Culture'. These categories help in organizing content for "
        f'better accessibility and targeting. For this task, {_EOL_TAIL} should be classified under '
        'one general category in one word:"',
        "In this task, you're given a statement and you need to determine whether it's presenting "
        "an 'Opinion' or a 'Fact'. This distinction is vital for information verification, "
        f'educational purposes, and content analysis. For this task, {_EOL_TAIL} discriminates '
        'between opinion and fact in one word:"',
        "In this task, you're given a review from an online platform. Your task is to generate a "
        "rating for the product based on the review on a scale of 1-5, where 1 means 'extremely "
        f"negative' and 5 means 'extremely positive'. For this task, {_EOL_TAIL} reflects the "
        'sentiment in one word:"',
        "In this task, you're reading a personal diary entry. Your task is to identify the "
        "predominant emotion expressed, such as joy, sadness, anger, fear, or love. For this task, "
        f'{_EOL_TAIL} conveys the emotion in one word:"',
        "In this task, you're presented with two sentences. Your task is to assess whether the "
        "sentences convey the same meaning. Use 'identical', 'similar', 'different', or 'unrelated' "
        "to describe the relationship. To enhance the performance of this task, "
        f'{_EOL_TAIL} means in one word:"',
        "In this task, you're given a sentence and a phrase. Your task is to determine if the "
        "phrase can be a contextual synonym within the given sentence. Options include 'yes', "
        "'no', or 'partially'. To enhance the performance of this task, "
        f'{_EOL_TAIL} means in one word:"',
        "In this task, you're examining a news article. Your task is to extract the most critical "
        f'fact from the article. For this task, {_EOL_TAIL} encapsulates the key fact in one word:"',
        "In this task, you're reviewing a scientific abstract. Your task is to identify the main "
        "entities (e.g., proteins, diseases) and their relations (e.g., causes, treats). For this "
        f'task, {_EOL_TAIL} highlights the primary entity or relation in one word:"',
    ),
}

PROMPT_ALIASES = {"cot": "pcot", "pretended-cot": "pcot", "knowledge": "ke"}


def normalize_sentence(text: str) -> str:
    """Normalise a sentence exactly as the official evaluation does.

    Append '.' when the text does not end in punctuation, turn double quotes into single
    quotes (the prompt quotes the sentence with double quotes), and a final '?' into '.'.
    Surrounding whitespace is stripped first.
    """
    s = text.strip()
    if s and s[-1] not in ".?\"'":
        s += "."
    s = s.replace('"', "'")
    if s and s[-1] == "?":
        s = s[:-1] + "."
    return s


def _insert_placeholder(template: str) -> str:
    """Put the placeholder just before the sentence (before its opening quote, if quoted)."""
    at = template.index(SENTENCE_SLOT)
    if at > 0 and template[at - 1] in "\"'“«":
        at -= 1
    return template[:at] + PLACEHOLDER + " " + template[at:]


def _remove_placeholder(template: str) -> str:
    return template.replace(PLACEHOLDER + " ", "").replace(PLACEHOLDER, "")


@dataclass(frozen=True)
class PromptSpec:
    """A resolved prompt method: its name and the template(s) actually fed to the model."""

    name: str
    templates: tuple[str, ...]
    normalize: bool = True

    def sentence(self, text: str) -> str:
        """The text as it goes into the prompt (normalised unless turned off)."""
        return normalize_sentence(text) if self.normalize else text

    @staticmethod
    def fill(template: str, sentence: str) -> str:
        return template.replace(SENTENCE_SLOT, sentence).strip()

    def render(self, text: str) -> list[str]:
        """The model inputs for one text: one per template."""
        sentence = self.sentence(text)
        return [self.fill(t, sentence) for t in self.templates]


def resolve_prompt(prompt: str, tp: bool, normalize: bool = True) -> PromptSpec:
    """Turn a method name (``prompteol``, ``pcot``, ``ke``, ``metaeol``) or a user template
    into the templates used with TP on (placeholder present) or off (placeholder removed)."""
    key = PROMPT_ALIASES.get(prompt.lower(), prompt.lower())
    if key in BUILTIN_PROMPTS:
        name, templates = key, BUILTIN_PROMPTS[key]
    else:
        if SENTENCE_SLOT not in prompt:
            known = ", ".join(sorted(BUILTIN_PROMPTS))
            raise InputError(
                f"prompt {prompt!r} is neither a method ({known}) nor a template containing "
                f"{SENTENCE_SLOT}"
            )
        if prompt.count(SENTENCE_SLOT) != 1 or prompt.count(PLACEHOLDER) > 1:
            raise InputError(
                f"a template needs exactly one {SENTENCE_SLOT} and at most one {PLACEHOLDER}: "
                f"{prompt!r}"
            )
        if PLACEHOLDER in prompt and prompt.index(PLACEHOLDER) > prompt.index(SENTENCE_SLOT):
            raise InputError(f"{PLACEHOLDER} must come before {SENTENCE_SLOT}: {prompt!r}")
        name, templates = "custom", (prompt,)
    fixed = []
    for t in templates:
        if tp and PLACEHOLDER not in t:
            t = _insert_placeholder(t)
        elif not tp:
            t = _remove_placeholder(t)
        fixed.append(t)
    return PromptSpec(name=name, templates=tuple(fixed), normalize=normalize)
