"""Project-written concept-pair sets for the linear-representation baseline.

Each pair differs in one concept only (language: English vs French; mood: question vs statement) while
the content stays fixed, so the pair differences estimate that concept's direction. Sentences are built
from subject x predicate tables whose two columns were written together, so both sides always match.
Subjects are singular third person and predicates need no gender agreement, so every combination is correct
in both languages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from rankaudit.prompts.tables import PromptDataError

CONCEPT_SPLIT = "all"
CONCEPT_SOURCE = "rankaudit-generated"

# (English, French) subjects and predicates; every subject works with every predicate in both languages.
EN_FR_SUBJECTS: tuple[tuple[str, str], ...] = (
    ("My brother", "Mon frère"),
    ("My sister", "Ma sœur"),
    ("My mother", "Ma mère"),
    ("My father", "Mon père"),
    ("Our neighbour", "Notre voisin"),
    ("The teacher", "Le professeur"),
    ("The child", "L'enfant"),
    ("The doctor", "Le médecin"),
    ("The baker", "Le boulanger"),
    ("The student", "L'étudiant"),
    ("My friend", "Mon ami"),
)
EN_FR_PREDICATES: tuple[tuple[str, str], ...] = (
    ("reads a book every evening.", "lit un livre chaque soir."),
    ("drinks coffee in the morning.", "boit du café le matin."),
    ("walks in the park.", "se promène dans le parc."),
    ("opens the window.", "ouvre la fenêtre."),
    ("writes a long letter.", "écrit une longue lettre."),
    ("plays the piano.", "joue du piano."),
    ("cooks dinner tonight.", "prépare le dîner ce soir."),
    ("likes the rain.", "aime la pluie."),
    ("is waiting for the train.", "attend le train."),
    ("speaks slowly.", "parle lentement."),
    ("sings in the kitchen.", "chante dans la cuisine."),
    ("buys bread at the market.", "achète du pain au marché."),
    ("lives near the sea.", "habite près de la mer."),
)

# Subjects as they read inside a question (lower case) and at the start of a statement.
QS_SUBJECTS: tuple[str, ...] = (
    "your brother",
    "the new teacher",
    "Anna",
    "the manager",
    "your neighbour",
    "the pilot",
    "the taxi driver",
    "the head chef",
)
# (question frame, statement predicate): "{s}" is the subject.
QS_PREDICATES: tuple[tuple[str, str], ...] = (
    ("Does {s} like green tea?", "likes green tea."),
    ("Does {s} live in Paris?", "lives in Paris."),
    ("Does {s} speak Spanish?", "speaks Spanish."),
    ("Does {s} work on weekends?", "works on weekends."),
    ("Does {s} play tennis?", "plays tennis."),
    ("Does {s} drive to work?", "drives to work."),
    ("Does {s} know the answer?", "knows the answer."),
    ("Does {s} own a bicycle?", "owns a bicycle."),
    ("Is {s} at home today?", "is at home today."),
    ("Is {s} ready to leave?", "is ready to leave."),
    ("Is {s} still at the office?", "is still at the office."),
    ("Is {s} allergic to peanuts?", "is allergic to peanuts."),
    ("Is {s} on holiday this week?", "is on holiday this week."),
)


def _en_fr_pair(subject: int, predicate: int) -> tuple[str, str]:
    (en_subject, fr_subject), (en_predicate, fr_predicate) = EN_FR_SUBJECTS[subject], EN_FR_PREDICATES[predicate]
    return f"{en_subject} {en_predicate}", f"{fr_subject} {fr_predicate}"


def _question_statement_pair(subject: int, predicate: int) -> tuple[str, str]:
    name = QS_SUBJECTS[subject]
    question, statement = QS_PREDICATES[predicate]
    return question.format(s=name), f"{name[0].upper()}{name[1:]} {statement}"


PAIR_KINDS = {
    "translation": (EN_FR_SUBJECTS, EN_FR_PREDICATES, _en_fr_pair, "english_french"),
    "question_statement": (QS_SUBJECTS, QS_PREDICATES, _question_statement_pair, "question_statement"),
}


def pair_capacity(kind: str) -> int:
    """How many distinct pairs the tables of `kind` can produce (subjects x predicates)."""
    subjects, predicates, _, _ = _kind(kind)
    return len(subjects) * len(predicates)


def generate_pairs(kind: str, n: int, seed: int | Sequence[int], dataset: str) -> pd.DataFrame:
    """Draw `n` distinct concept pairs, rows ordered pair 0 a, pair 0 b, pair 1 a, ...

    Predicates are used round-robin (each with a seed-chosen subject not yet used with it), so small sets
    still cover every predicate.
    """
    subjects, predicates, render, category = _kind(kind)
    capacity = pair_capacity(kind)
    if not 1 <= n <= capacity:
        raise PromptDataError(
            f"dataset {dataset!r}: requested {n} {kind} pairs but the generator can produce between 1 and "
            f"{capacity} distinct ones ({len(subjects)} subjects x {len(predicates)} predicates)"
        )
    rng = np.random.default_rng(seed)
    predicate_order = rng.permutation(len(predicates))
    subject_orders = [rng.permutation(len(subjects)) for _ in predicates]
    rows = []
    for pair in range(n):
        predicate = int(predicate_order[pair % len(predicates)])
        subject = int(subject_orders[predicate][pair // len(predicates)])
        side_a, side_b = render(subject, predicate)
        rows += [(side_a, category, pair, "a"), (side_b, category, pair, "b")]
    frame = pd.DataFrame(rows, columns=["instruction", "category", "pair", "side"])
    frame["source"] = CONCEPT_SOURCE
    frame["split"] = CONCEPT_SPLIT
    return frame[["instruction", "category", "source", "split", "pair", "side"]]


def _kind(kind: str) -> tuple[tuple, tuple, Callable[[int, int], tuple[str, str]], str]:
    if kind not in PAIR_KINDS:
        raise PromptDataError(f"unknown concept-pair kind {kind!r}; expected one of {sorted(PAIR_KINDS)}")
    return PAIR_KINDS[kind]
