"""A built-in, download-free task: procedurally generated multi-step arithmetic word problems.

Each problem follows one running quantity through ``difficulty + 1`` operations (+, −, ×, ÷),
told as a short story: people buy, find, give away, sell, share equally, pack into boxes, spend
money... The quantity may change owner ("Omar has 3 times as many marbles as Ava") or unit
("she sells all of them for $4 per marble"); the question asks for its final value. Every intermediate
value is a positive integer and every division is exact. The structured record (``start`` and
``ops``) is kept in each row, so answers can be recomputed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hrpo.sampling import stable_seed
from hrpo.tasks.base import DEFAULT_MARKER, Row, Task
from hrpo.tasks.numbers import numbers_match

# difficulty -> (start range, add/subtract operand range, factor/divisor range, largest value).
_LEVELS: dict[int, tuple[tuple[int, int], tuple[int, int], tuple[int, int], int]] = {
    0: ((2, 12), (1, 9), (2, 1), 30),  # one + or − (empty factor range): for ~100M-parameter models
    1: ((2, 20), (1, 10), (2, 3), 100),
    2: ((5, 50), (2, 30), (2, 4), 500),
    3: ((10, 120), (5, 80), (2, 6), 2_000),
    4: ((20, 500), (10, 300), (2, 9), 10_000),
    5: ((50, 2_000), (20, 1_000), (2, 12), 100_000),
}

_FEMALE = ("Ava", "Mia", "Sofia", "Emma", "Lena", "Priya", "Amara", "Yuki", "Chloe", "Nora", "Zara", "Ines")
_MALE = ("Liam", "Noah", "Omar", "Kenji", "Mateo", "Ethan", "Ravi", "Leo", "Samuel", "Felix", "Diego", "Hugo")
_ITEMS = (
    ("marble", "marbles"),
    ("sticker", "stickers"),
    ("pencil", "pencils"),
    ("cookie", "cookies"),
    ("seashell", "seashells"),
    ("baseball card", "baseball cards"),
    ("balloon", "balloons"),
    ("toy car", "toy cars"),
    ("stamp", "stamps"),
    ("apple", "apples"),
    ("cupcake", "cupcakes"),
    ("crayon", "crayons"),
    ("bead", "beads"),
    ("postcard", "postcards"),
    ("lemon", "lemons"),
    ("notebook", "notebooks"),
)
_BOXES = (("box", "boxes"), ("bag", "bags"), ("jar", "jars"), ("basket", "baskets"), ("tin", "tins"))
_PURCHASES = (
    "a book",
    "lunch",
    "a movie ticket",
    "a new toy",
    "art supplies",
    "groceries",
    "a plant",
    "a scarf",
)
_FRACTIONS = {2: "half", 3: "a third", 4: "a quarter"}


def _count(n: int, noun: tuple[str, str]) -> str:
    return f"{n} {noun[0] if n == 1 else noun[1]}"


@dataclass(frozen=True)
class _Person:
    name: str
    female: bool

    @property
    def subj(self) -> str:
        return "She" if self.female else "He"

    @property
    def obj(self) -> str:
        return "her" if self.female else "him"

    @property
    def poss(self) -> str:
        return "her" if self.female else "his"

    @property
    def refl(self) -> str:
        return "herself" if self.female else "himself"


@dataclass
class _Story:
    """Who holds the running quantity, and in what unit, while a problem is being told."""

    rng: random.Random
    owner: _Person
    cast: list[_Person]
    unit: str  # "items", "boxes" (boxes of items) or "money"
    item: tuple[str, str]
    box: tuple[str, str] = ("box", "boxes")
    name_next: bool = False  # someone else was just mentioned: name the owner rather than "she"
    mentioned: set[str] = field(default_factory=set)

    def who(self) -> str:
        """The owner as the subject of a new sentence."""
        if self.name_next or self.rng.random() < 0.3:
            self.name_next = False
            return self.owner.name
        return self.owner.subj

    def whom(self) -> str:
        """The owner as an object ("gives her 5"); call it before naming anyone else."""
        return self.owner.name if self.name_next else self.owner.obj

    def friend(self) -> _Person:
        """Someone other than the owner (the next sentence then names the owner, to stay clear)."""
        person = self.rng.choice([p for p in self.cast if p.name != self.owner.name])
        self.mentioned.add(person.name)
        self.name_next = True
        return person

    def has_fresh(self) -> bool:
        return any(p.name not in self.mentioned for p in self.cast)

    def fresh(self) -> _Person:
        """Someone not mentioned yet: "Leo has 3 times as many" must not contradict earlier facts."""
        person = self.rng.choice([p for p in self.cast if p.name not in self.mentioned])
        self.mentioned.add(person.name)
        self.name_next = True
        return person

    def hand_to(self, person: _Person) -> None:
        self.owner = person
        self.name_next = True

    def amount(self, n: int) -> str:
        if self.unit == "money":
            return f"${n}"
        return _count(n, self.box if self.unit == "boxes" else self.item)

    def plural(self) -> str:
        return self.box[1] if self.unit == "boxes" else self.item[1]

    def question(self) -> str:
        if self.unit == "money":
            return f"How many dollars does {self.owner.name} have now?"
        return f"How many {self.plural()} does {self.owner.name} have now?"


# A template tells one operation with operand k as a sentence, updating the story (owner, unit).
# An op function returns None when none of its templates fits (unit, wording limits, nobody fresh
# left to compare with); generate_problem then tries another operation.
Template = Callable[[_Story, int], "str | None"]


def _pick(s: _Story, choices: list[Callable[[], str]]) -> str | None:
    return s.rng.choice(choices)() if choices else None


def _add(s: _Story, k: int) -> str | None:
    def gift() -> str:
        whom = s.whom()
        return f"{s.friend().name} gives {whom} {s.amount(k)}."

    choices: list[Callable[[], str]] = [gift]
    if s.unit == "money":
        choices += [
            lambda: f"{s.who()} earns ${k} more doing chores.",
            lambda: f"{s.who()} gets ${k} for {s.owner.poss} birthday.",
        ]
    elif s.unit == "boxes":
        choices += [lambda: f"{s.who()} fills {k} more {s.box[0] if k == 1 else s.box[1]}."]
    else:
        choices += [
            lambda: f"{s.who()} buys {k} more {s.item[0] if k == 1 else s.item[1]}.",
            lambda: f"{s.who()} finds {s.amount(k)}.",
            lambda: f"{s.who()} wins {s.amount(k)} at the fair.",
        ]
    return _pick(s, choices)


def _subtract(s: _Story, k: int) -> str | None:
    def give(verb: str) -> Callable[[], str]:
        def render() -> str:
            who = s.who()
            return f"{who} {verb} {s.amount(k)} to {s.friend().name}."

        return render

    choices: list[Callable[[], str]] = [give("gives")]
    if s.unit == "money":
        choices += [
            lambda: f"{s.who()} spends ${k} on {s.rng.choice(_PURCHASES)}.",
            lambda: f"{s.who()} pays ${k} for {s.rng.choice(_PURCHASES)}.",
        ]
    else:
        choices += [
            give("hands"),
            lambda: f"{s.who()} sells {s.amount(k)}.",
            lambda: f"{s.who()} loses {s.amount(k)}.",
        ]
    return _pick(s, choices)


def _times(s: _Story, k: int) -> str:
    return "twice" if k == 2 and s.rng.random() < 0.5 else f"{k} times"


def _multiply(s: _Story, k: int) -> str | None:
    def richer() -> str:
        f = s.fresh()
        what = "as much money" if s.unit == "money" else f"as many {s.plural()}"
        text = f"{f.name} has {_times(s, k)} {what} as {s.owner.name}."
        s.hand_to(f)
        return text

    def more_boxes() -> str:
        box = s.rng.choice(_BOXES)
        return (
            f"{s.who()} puts them all in one {box[0]}, then fills {k - 1} more "
            f"{box[0] if k == 2 else box[1]} with the same number of {s.item[1]} in each."
        )

    def sell_all() -> str:
        what = s.item[0] if s.unit == "items" else s.box[0]
        text = f"{s.who()} sells all of them for ${k} per {what}."
        s.unit = "money"
        return text

    def grow() -> str:
        return f"{s.who()} runs a lemonade stand and ends the summer with {_times(s, k)} as much money."

    choices: list[Callable[[], str]] = [richer] if s.has_fresh() else []
    if s.unit == "items":
        choices += [more_boxes, sell_all]
    elif s.unit == "boxes":
        choices.append(sell_all)
    else:
        choices.append(grow)
    return _pick(s, choices)


def _divide(s: _Story, k: int) -> str | None:
    def share() -> str:
        who = s.who()
        f = s.fresh()
        what = "the money" if s.unit == "money" else f"the {s.plural()}"
        if k == 2:
            text = f"{who} shares {what} equally between {f.name} and another friend and keeps none."
        else:
            text = f"{who} shares {what} equally among {k} friends, including {f.name}, and keeps none."
        s.hand_to(f)
        return text

    def split_with_friends() -> str:
        others = "a friend" if k == 2 else f"{k - 1} friends"
        return f"{s.who()} splits it equally between {s.owner.refl} and {others}."

    def keep_fraction() -> str:
        who = s.who()
        return f"{who} keeps {_FRACTIONS[k]} of them and gives the rest to {s.friend().name}."

    def pack() -> str:
        s.box = s.rng.choice(_BOXES)
        text = f"{s.who()} packs them into {s.box[1]} of {k} {s.item[1]} each."
        s.unit = "boxes"
        return text

    def buy_items() -> str:
        s.item = s.rng.choice([i for i in _ITEMS if i != s.item])
        text = f"{s.who()} spends all of it on {s.item[1]} that cost ${k} each."
        s.unit = "items"
        return text

    choices: list[Callable[[], str]] = [share] if s.has_fresh() else []
    if s.unit == "money":
        choices += [split_with_friends, buy_items]
    elif k in _FRACTIONS:
        choices.append(keep_fraction)
    if s.unit == "items":
        choices.append(pack)
    return _pick(s, choices)


_TEMPLATES: dict[str, Template] = {"+": _add, "-": _subtract, "*": _multiply, "/": _divide}
_INVERSE = {"+": "-", "-": "+", "*": "/", "/": "*"}


def apply_op(value: int, op: str, operand: int) -> int:
    """One step of a problem's record; division must be exact."""
    if op == "+":
        return value + operand
    if op == "-":
        return value - operand
    if op == "*":
        return value * operand
    if op == "/":
        if operand == 0 or value % operand:
            raise ValueError(f"{value} / {operand} is not exact")
        return value // operand
    raise ValueError(f"unknown op {op!r}")


def _op_options(rng: random.Random, value: int, difficulty: int) -> list[tuple[str, int]]:
    """Operations keeping the value a positive integer within the level's bound, in random order.

    "+" or "-" is always among them (and always has a template), so a problem can always go on.
    """
    _, (alo, ahi), (flo, fhi), cap = _LEVELS[difficulty]
    options: list[tuple[str, int]] = []
    if value + alo <= cap:
        options.append(("+", rng.randint(alo, min(ahi, cap - value))))
    if value > 1:
        options.append(("-", rng.randint(1, min(ahi, value - 1))))
    factors = [f for f in range(flo, fhi + 1) if value * f <= cap]
    if factors:
        options.append(("*", rng.choice(factors)))
    divisors = [d for d in range(flo, fhi + 1) if value % d == 0]
    if divisors:
        # Few values have small divisors: list division twice so it is not the rarest operation.
        division = ("/", rng.choice(divisors))
        options += [division, division]
    rng.shuffle(options)
    return list(dict.fromkeys(options))


@dataclass(frozen=True)
class ArithmeticProblem:
    """One generated problem: its text and the record it was told from."""

    question: str
    start: int
    ops: tuple[tuple[str, int], ...]
    answer: int


def generate_problem(rng: random.Random, difficulty: int) -> ArithmeticProblem:
    """One word problem with ``difficulty + 1`` operations, drawn from ``rng``."""
    (slo, shi), _, _, _ = _LEVELS[difficulty]
    women, men = rng.sample(_FEMALE, 3), rng.sample(_MALE, 3)
    cast = [_Person(n, True) for n in women] + [_Person(n, False) for n in men]
    owner = rng.choice(cast)
    value = rng.randint(slo, shi)
    story = _Story(
        rng=rng, owner=owner, cast=cast, unit="items", item=rng.choice(_ITEMS), mentioned={owner.name}
    )
    if rng.random() < 0.2:
        story.unit = "money"
        opening = rng.choice([f"{owner.name} has ${value}.", f"{owner.name} has saved ${value}."])
    else:
        opening = rng.choice(
            [
                f"{owner.name} has {story.amount(value)}.",
                f"{owner.name} collects {story.amount(value)}.",
                f"{owner.name} buys {story.amount(value)} at the store.",
                f"{owner.name} starts the week with {story.amount(value)}.",
            ]
        )
    start = value
    sentences = [opening]
    ops: list[tuple[str, int]] = []
    for _ in range(difficulty + 1):
        options = _op_options(rng, value, difficulty)
        if ops:
            # Undoing the previous step ("packs into bags of 3" then "3 times as many") makes a
            # trivial problem: try that option last.
            undo = (_INVERSE[ops[-1][0]], ops[-1][1])
            options = [o for o in options if o != undo] + [o for o in options if o == undo]
        for op, k in options:
            text = _TEMPLATES[op](story, k)
            if text is not None:
                break
        else:  # unreachable while "+"/"-" templates always fit; fail loudly if that changes
            raise RuntimeError(f"no operation fits value {value} at difficulty {difficulty}")
        sentences.append(text)
        ops.append((op, k))
        value = apply_op(value, op, k)
    sentences.append(story.question())
    return ArithmeticProblem(" ".join(sentences), start, tuple(ops), value)


class ArithmeticTask(Task):
    """Multi-step arithmetic word problems, generated from a seed; no download.

    ``difficulty`` (0–5) sets the number of operations (``difficulty + 1``) and the size of the
    numbers. The ``test`` split is drawn first from its own seeded stream; ``train`` is drawn
    from another and skips any problem text that is in ``test``, so the splits are disjoint.
    Rows: ``prompt``, ``answer`` (the integer as a string), ``question``, ``id``, ``difficulty``,
    ``start`` and ``ops`` (``[{"op": "+", "value": 5}, ...]``, applied left to right to ``start``).
    """

    name = "arithmetic"
    answer_format = "The final answer is a whole number: write only the number, without units."
    ignore_marker_headings = True  # answers are numbers: a '#### Step' heading is no marker
    answer_kind = "number"

    def __init__(
        self,
        difficulty: int = 2,
        num_train: int = 5000,
        num_test: int = 200,
        seed: int = 0,
        marker: str = DEFAULT_MARKER,
        *,
        system_prompt: str | None = None,
        protocol: str = "hrpo",
    ) -> None:
        super().__init__(marker=marker, system_prompt=system_prompt, protocol=protocol)
        if isinstance(difficulty, bool) or difficulty not in _LEVELS:
            raise ValueError(f"difficulty must be one of {sorted(_LEVELS)}, got {difficulty!r}")
        for label, n in (("num_train", num_train), ("num_test", num_test)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(f"{label} must be a non-negative int, got {n!r}")
        self.difficulty = difficulty
        self.num_train = num_train
        self.num_test = num_test
        self.seed = seed
        self._cache: dict[str, list[ArithmeticProblem]] = {}

    def __repr__(self) -> str:
        return (
            f"ArithmeticTask(difficulty={self.difficulty}, num_train={self.num_train}, "
            f"num_test={self.num_test}, seed={self.seed}, marker={self.marker!r}, protocol={self.protocol!r})"
        )

    def problems(self, split: str) -> list[ArithmeticProblem]:
        """All generated problems of ``split`` (cached)."""
        if split not in self._cache:
            if split == "test":
                self._cache[split] = self._draw("test", self.num_test, exclude=set())
            else:
                exclude = {p.question for p in self.problems("test")}
                self._cache[split] = self._draw(split, self.num_train, exclude=exclude)
        return self._cache[split]

    def _draw(self, split: str, n: int, exclude: set[str]) -> list[ArithmeticProblem]:
        rng = random.Random(stable_seed("hrpo.arithmetic", self.seed, self.difficulty, split))
        seen = set(exclude)
        out: list[ArithmeticProblem] = []
        attempts = 0
        # Duplicates are rare (the space is huge); the bound only guards against a bad level table.
        while len(out) < n:
            attempts += 1
            if attempts > 20 * n + 1000:
                raise RuntimeError(
                    f"could not draw {n} distinct {split} problems at difficulty {self.difficulty}"
                )
            problem = generate_problem(rng, self.difficulty)
            if problem.question not in seen:
                seen.add(problem.question)
                out.append(problem)
        return out

    def _load(self, split: str, limit: int | None) -> list[Row]:
        problems = self.problems(split)
        if limit is not None:
            problems = problems[:limit]
        return [self._row(split, i, p) for i, p in enumerate(problems)]

    def _row(self, split: str, index: int, p: ArithmeticProblem) -> Row:
        return {
            "prompt": self.make_prompt(p.question),
            "answer": str(p.answer),
            "question": p.question,
            "id": f"arithmetic-d{self.difficulty}-s{self.seed}-{split}-{index:05d}",
            "difficulty": self.difficulty,
            "start": p.start,
            "ops": [{"op": op, "value": k} for op, k in p.ops],
        }

    def is_correct(self, predicted: str, reference: str) -> bool:
        """Whether the answer states one value, equal to the reference's (:mod:`hrpo.tasks.numbers`)."""
        return numbers_match(predicted, reference)


def recompute_answer(row: dict[str, Any]) -> int:
    """The answer of a row, recomputed from its ``start`` and ``ops`` columns."""
    value = row["start"]
    for step in row["ops"]:
        value = apply_op(value, step["op"], step["value"])
    return value
