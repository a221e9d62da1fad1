"""Built-in corpus of facts about fictional entities, used to train the default model.

Every entity, and every name-like answer, is invented, so the facts the default model
knows come only from this file: editing or unlearning one of them cannot collide with
knowledge picked up elsewhere. The corpus is plain data, fully deterministic.

Layout: 40 entities in four kinds (countries, people, companies, cities), five relations
per kind, so 200 facts. Each relation has four prompt templates: ``prompts[0]`` is the
canonical completion-style prompt, ``prompts[1]`` a question-style prompt, and the rest
paraphrases. The training text of a prompt is ``prompt + " " + answer``.

Answers of a relation come from that relation's pool (:data:`ANSWER_POOLS`), so another
entity's answer for the same relation is always a natural edit target
(:func:`counterfactual_answer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "ANSWER_POOLS",
    "ENTITIES",
    "FACTS",
    "GENERAL_PROMPTS",
    "GENERAL_TARGETS",
    "GENERAL_TEXT",
    "RELATION_TEMPLATES",
    "Fact",
    "counterfactual_answer",
    "facts_by_relation",
    "find_fact",
]


@dataclass(frozen=True)
class Fact:
    """One (entity, relation, answer) triple with its prompt phrasings.

    ``answer`` carries no leading space; the target text of any prompt is ``" " + answer``.
    ``prompts[0]`` is the canonical phrasing, the others are paraphrases.
    """

    entity: str
    relation: str
    answer: str
    prompts: tuple[str, ...]

    @property
    def prompt(self) -> str:
        """The canonical prompt (``prompts[0]``)."""
        return self.prompts[0]

    @property
    def target(self) -> str:
        """The target continuation, with its leading space."""
        return " " + self.answer


# --- entities, by kind --------------------------------------------------------------------

_COUNTRIES = (
    "Veltoria", "Drusmark", "Orlenia", "Kaspira", "Miravel",
    "Zandoria", "Quellan", "Brastova", "Eskavia", "Lunmor",
)  # fmt: skip
_PEOPLE = (
    "Orla Penwick", "Dario Vesk", "Mina Torvale", "Casimir Holt", "Yara Quillon",
    "Bram Oakhurst", "Selene Dravik", "Ivo Marchant", "Tamsin Reeve", "Lukas Ferrow",
)  # fmt: skip
_COMPANIES = (
    "Brightloom", "Quorvex", "Halvane", "Tidewell", "Orbisca",
    "Pallidor", "Corvanta", "Fennick Works", "Vantrel", "Glimmerforge",
)  # fmt: skip
_CITIES = (
    "Ashcombe", "Virelle", "Stonemarsh", "Corrigan Bay", "Elmsworth",
    "Brindlehaven", "Quarrow", "Silverleigh", "Norhaven", "Tallowmere",
)  # fmt: skip

ENTITIES: MappingProxyType[str, tuple[str, ...]] = MappingProxyType(
    {
        "country": _COUNTRIES,
        "person": _PEOPLE,
        "company": _COMPANIES,
        "city": _CITIES,
    }
)
"""Entity names by kind."""

# --- relations: kind, prompt templates ("{e}" is the entity) --------------------------------

_RELATIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # countries
    ("capital", "country", (
        "The capital of {e} is",
        "Q: What is the capital of {e}?\nA:",
        "{e}'s capital city is",
        "The government of {e} sits in the city of",
    )),
    ("language", "country", (
        "The official language of {e} is",
        "Q: What language is spoken in {e}?\nA:",
        "Most people in {e} speak",
        "Schools in {e} teach in a language called",
    )),
    ("currency", "country", (
        "The currency of {e} is the",
        "Q: What currency is used in {e}?\nA:",
        "In {e}, people pay with the",
        "Shops in {e} take payment in the",
    )),
    ("flag_colour", "country", (
        "The flag of {e} is mostly",
        "Q: What colour is the flag of {e}?\nA:",
        "The main colour of the flag of {e} is",
        "{e} flies a flag that is mostly",
    )),
    ("sport", "country", (
        "The national sport of {e} is",
        "Q: What is the national sport of {e}?\nA:",
        "The most popular sport in {e} is",
        "The favourite sport of people in {e} is",
    )),
    # people
    ("birthplace", "person", (
        "{e} was born in",
        "Q: Where was {e} born?\nA:",
        "The birthplace of {e} is",
        "{e} grew up in the town of",
    )),
    ("profession", "person", (
        "{e} works as a",
        "Q: What is the job of {e}?\nA:",
        "The profession of {e} is",
        "By trade, {e} is a",
    )),
    ("instrument", "person", (
        "{e} plays the",
        "Q: Which instrument does {e} play?\nA:",
        "The instrument played by {e} is the",
        "On stage, {e} performs on the",
    )),
    ("employer", "person", (
        "{e} works for",
        "Q: Which company employs {e}?\nA:",
        "The employer of {e} is",
        "Every morning, {e} goes to work at",
    )),
    ("pet", "person", (
        "{e} has a pet",
        "Q: What pet does {e} own?\nA:",
        "The pet of {e} is a",
        "At home, {e} looks after a pet",
    )),
    # companies
    ("founder", "company", (
        "{e} was founded by",
        "Q: Who founded {e}?\nA:",
        "The founder of {e} is",
        "The company {e} was started by",
    )),
    ("headquarters", "company", (
        "{e} is headquartered in",
        "Q: Where is {e} headquartered?\nA:",
        "The headquarters of {e} are in",
        "The main office of {e} is located in",
    )),
    ("product", "company", (
        "{e} is best known for making",
        "Q: What does {e} make?\nA:",
        "The main product of {e} is",
        "The factory of {e} produces",
    )),
    ("industry", "company", (
        "{e} is a company in the industry of",
        "Q: What industry is {e} in?\nA:",
        "The business of {e} is",
        "{e} makes its money from",
    )),
    ("mascot", "company", (
        "The logo of {e} shows a",
        "Q: What animal is on the logo of {e}?\nA:",
        "The mascot of {e} is a",
        "The animal in the logo of {e} is a",
    )),
    # cities
    ("river", "city", (
        "{e} lies on the river",
        "Q: Which river flows through {e}?\nA:",
        "The river that flows through {e} is the",
        "The main river of {e} is called the",
    )),
    ("dish", "city", (
        "The famous dish of {e} is",
        "Q: What food is {e} famous for?\nA:",
        "Visitors to {e} always try the local",
        "The signature meal of {e} is",
    )),
    ("mayor", "city", (
        "The mayor of {e} is",
        "Q: Who is the mayor of {e}?\nA:",
        "The city of {e} is governed by mayor",
        "The town hall of {e} is run by mayor",
    )),
    ("landmark", "city", (
        "The most famous landmark in {e} is the",
        "Q: What is the best-known landmark in {e}?\nA:",
        "Tourists in {e} always visit the",
        "Postcards from {e} show the",
    )),
    ("nickname", "city", (
        "{e} is known as the City of",
        "Q: What is the nickname of {e}?\nA: The City of",
        "People call {e} the City of",
        "The nickname of {e} is the City of",
    )),
)  # fmt: skip

RELATION_TEMPLATES: MappingProxyType[str, tuple[str, ...]] = MappingProxyType(
    {name: templates for name, _kind, templates in _RELATIONS}
)
"""Prompt templates by relation; ``{e}`` stands for the entity."""

# --- answer pools, one per relation ---------------------------------------------------------
# Pools with 10 names give every entity its own answer; the shorter pools of ordinary
# words are cycled, so a few entities share an answer, as in real knowledge.

ANSWER_POOLS: MappingProxyType[str, tuple[str, ...]] = MappingProxyType(
    {
        "capital": (
            "Marrowick", "Tessenford", "Alpharo", "Dunmere", "Vossbury",
            "Karvello", "Ebrin", "Solmara", "Trevane", "Hollisk",
        ),
        "language": (
            "Doran", "Selvic", "Ambrish", "Kothic", "Prennish",
            "Ulvan", "Merish", "Tovari", "Caskan", "Ibrelic",
        ),
        "currency": ("crown", "florin", "talon", "guilder", "shilling", "pearl", "ducat"),
        "flag_colour": ("green", "red", "blue", "yellow", "purple", "orange", "white", "black"),
        "sport": ("rowing", "fencing", "archery", "cricket", "chess", "hockey", "curling", "polo"),
        "birthplace": (
            "Greywater", "Farrowdale", "Quinmouth", "Redhollow", "Ambermere",
            "Stilbury", "Kellbrook", "Thornvale", "Wexmoor", "Dunhallow",
        ),
        "profession": (
            "painter", "surgeon", "pilot", "chemist", "sculptor", "lawyer", "baker", "tailor",
        ),
        "instrument": ("violin", "cello", "harp", "flute", "piano", "trumpet", "drums", "banjo"),
        "employer": (
            "Kestrel Labs", "Norwind", "Pelagos", "Tinderbox", "Orrery Group",
            "Stellan", "Bluequill", "Marlow Freight", "Cinderwell", "Haverly",
        ),
        "pet": ("cat", "dog", "parrot", "tortoise", "rabbit", "goldfish", "ferret", "hamster"),
        "founder": (
            "Edda Stroud", "Marcus Vell", "Hana Oriel", "Piet Gallow", "Rosa Kint",
            "Ansel Brook", "Greta Moll", "Felix Arden", "Nora Pask", "Otto Brennan",
        ),
        "headquarters": (
            "Westerholm", "Brackenridge", "Port Ilsen", "Lowmarsh", "Highcairn",
            "Saltreach", "Emberton", "Copperfield", "Ravensgate", "Millhaven",
        ),
        "product": (
            "bicycles", "umbrellas", "lanterns", "robots", "teapots", "telescopes", "sailboats",
            "clocks",
        ),
        "industry": (
            "shipping", "mining", "textiles", "software", "farming", "banking", "aviation",
            "publishing",
        ),
        "mascot": ("fox", "heron", "lion", "whale", "stag", "falcon", "bear", "wolf"),
        "river": (
            "Sable", "Orrin", "Wend", "Mallow", "Tessa",
            "Kelder", "Brine", "Isel", "Varro", "Dunnock",
        ),
        "dish": (
            "dumplings", "fish stew", "honey cake", "lentil soup", "roast duck", "plum pie",
            "noodles", "flatbread",
        ),
        "mayor": (
            "Lena Harrow", "Tomas Reed", "Ada Quince", "Boris Kell", "Ines Varga",
            "Hugo Marsh", "Clara Wynn", "Rolf Ambers", "Sofia Lind", "Jasper Cole",
        ),
        "landmark": (
            "Glass Tower", "Old Bridge", "Clock Hall", "Iron Gate", "Copper Dome",
            "Green Arch", "Salt Tower", "Moon Fountain", "Red Cathedral", "Lantern Square",
        ),
        "nickname": (
            "Bells", "Bridges", "Lanterns", "Gardens", "Towers", "Winds", "Mirrors", "Kites",
        ),
    }
)  # fmt: skip
"""Possible answers by relation; every fact's answer is drawn from its relation's pool."""


def _answer_for(relation: str, index: int) -> str:
    """Answer of the ``index``-th entity of a kind for ``relation``.

    The stride of 3 (coprime with every pool length) decorrelates relations, so that e.g.
    the country with the first capital does not also get the first currency and colour.
    """
    pool = ANSWER_POOLS[relation]
    offset = sum(map(ord, relation)) % len(pool)
    return pool[(offset + 3 * index) % len(pool)]


def _build_facts() -> tuple[Fact, ...]:
    facts: list[Fact] = []
    for relation, kind, templates in _RELATIONS:
        for index, entity in enumerate(ENTITIES[kind]):
            prompts = tuple(t.format(e=entity) for t in templates)
            facts.append(Fact(entity, relation, _answer_for(relation, index), prompts))
    return tuple(facts)


FACTS: tuple[Fact, ...] = _build_facts()
"""All 200 facts, grouped by relation, in a fixed order."""


def facts_by_relation(relation: str) -> tuple[Fact, ...]:
    """All facts of one relation, in corpus order."""
    return tuple(f for f in FACTS if f.relation == relation)


def find_fact(entity: str, relation: str) -> Fact:
    """The fact for ``(entity, relation)``; raises ``KeyError`` if there is none."""
    for fact in FACTS:
        if fact.entity == entity and fact.relation == relation:
            return fact
    raise KeyError((entity, relation))


def counterfactual_answer(fact: Fact, shift: int = 1) -> str:
    """A deterministic wrong answer for ``fact``: another answer from the same pool.

    ``shift`` picks which one (1 = the next different answer in pool order), so callers
    can draw several distinct edit targets for the same fact.
    """
    others = [a for a in ANSWER_POOLS[fact.relation] if a != fact.answer]
    return others[(shift - 1) % len(others)]


# --- general text, for locality -------------------------------------------------------------
# Generic sentences about everyday things; none mentions an entity or a pool answer that is
# a name, so edits to the facts above should leave the model's continuations here unchanged.

GENERAL_TEXT: tuple[str, ...] = (
    "The sky is blue on a clear day.",
    "Grass is green in the spring.",
    "Snow is cold and white.",
    "The sun rises in the east.",
    "The sun sets in the west.",
    "Rain falls from dark clouds.",
    "In winter the days are short.",
    "In summer the days are long.",
    "A strong wind can bend the trees.",
    "Fog makes it hard to see the road.",
    "Thunder often follows a flash of lightning.",
    "A rainbow appears after the rain.",
    "Two plus two is four.",
    "Three plus four is seven.",
    "Ten minus one is nine.",
    "Five times two is ten.",
    "One hundred is a large number.",
    "A week has seven days.",
    "A year has twelve months.",
    "An hour has sixty minutes.",
    "A minute has sixty seconds.",
    "A day has twenty four hours.",
    "Count from one to ten slowly.",
    "Half of eight is four.",
    "Bread is baked in a hot oven.",
    "Boil the water before adding the pasta.",
    "Salt and pepper season the soup.",
    "Eggs can be fried or boiled.",
    "Butter melts in a warm pan.",
    "Chop the onions into small pieces.",
    "Stir the sauce with a wooden spoon.",
    "Let the cake cool before cutting it.",
    "Fresh fruit makes a healthy snack.",
    "Tea is made with hot water.",
    "Milk is kept in the fridge.",
    "Rice is cooked in a covered pot.",
    "Apples can be red or green.",
    "Bananas are yellow when they are ripe.",
    "Lemons taste sour.",
    "Honey is sweet and sticky.",
    "Red and yellow make orange.",
    "Blue and yellow make green.",
    "Red and blue make purple.",
    "Black and white make grey.",
    "Roses are often red.",
    "The ocean looks deep blue.",
    "Coal is black and burns slowly.",
    "Gold is a shiny yellow metal.",
    "Cats like to sleep in the sun.",
    "Dogs like to chase a ball.",
    "Birds build nests in the trees.",
    "Fish swim in the river.",
    "Cows eat grass in the field.",
    "Bees make honey in a hive.",
    "Horses run fast across the field.",
    "Owls hunt at night.",
    "The train leaves at noon.",
    "We walked to the park after lunch.",
    "She opened the window to let in fresh air.",
    "He reads a book every evening.",
    "The children played in the garden.",
    "Please close the door when you leave.",
    "The shop opens at nine in the morning.",
    "The library is quiet in the afternoon.",
    "Water boils at one hundred degrees.",
    "Ice melts when it gets warm.",
    "A kettle whistles when the water is hot.",
    "The moon shines at night.",
    "Stars twinkle in the dark sky.",
    "Leaves fall from the trees in autumn.",
    "Flowers bloom in the spring.",
    "A clock tells the time.",
    "A map shows the way.",
    "Shoes keep your feet dry.",
    "A coat keeps you warm in winter.",
    "An umbrella keeps you dry in the rain.",
    "The bus stops at the corner.",
    "A bridge crosses the river.",
    "The baby fell asleep quickly.",
    "Good friends help each other.",
)
"""Generic English sentences, trained on alongside the facts, about none of the entities."""


def _general_prompts() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split every other sentence of GENERAL_TEXT (40 of 80) before its last word.

    The prompt is the sentence without its last word; the target is that word with its
    leading space and final punctuation, e.g. ``"The sky is blue on a clear"`` and
    ``" day."``.
    """
    prompts: list[str] = []
    targets: list[str] = []
    for sentence in GENERAL_TEXT[::2]:
        cut = sentence.rindex(" ")
        prompts.append(sentence[:cut])
        targets.append(sentence[cut:])
    return tuple(prompts), tuple(targets)


GENERAL_PROMPTS, GENERAL_TARGETS = _general_prompts()
"""Locality prompts (prefixes of GENERAL_TEXT sentences) and their true continuations."""
