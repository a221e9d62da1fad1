"""Write the general prompt set that ships with LOKA Serve (``memory_store/data/``).

The set was written for this project: hand-written templates over hand-picked subjects across
many domains, in completion, question and chat form. It is deterministic: running this script
again writes the same bytes. Two disjoint splits come out of it:

- ``train``: gate negatives and retention prompts for any model;
- ``heldout``: only for *measuring* the gate's false-positive rate. Its subjects and templates
  appear in no ``train`` prompt, and the engine never loads it.

Run: ``python scripts/make_general_prompts.py`` (writes memory_store/data/general_prompts.jsonl).
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

logger = logging.getLogger(__name__)

OUT = Path(__file__).resolve().parents[1] / "memory_store" / "data" / "general_prompts.jsonl"

# domain -> (subjects, templates). "{x}" is the subject. Each template names its form.
C, Q, H = "completion", "question", "chat"

DOMAINS: dict[str, tuple[list[str], list[tuple[str, str]]]] = {
    "country": (
        ["France", "Japan", "Brazil", "Kenya", "Canada", "Norway", "India", "Mexico", "Egypt",
         "Australia", "Argentina", "Vietnam", "Poland", "Turkey", "Peru", "Ghana", "Sweden",
         "Thailand", "Chile", "Morocco", "Portugal", "Indonesia", "Ireland", "Nepal", "Cuba",
         "Finland", "Greece", "Iceland", "Colombia", "Ethiopia", "Hungary", "Malaysia",
         "New Zealand", "Pakistan", "Romania", "Senegal", "South Korea", "Spain", "Ukraine",
         "Uruguay", "Austria", "Belgium", "Bolivia", "Croatia", "Denmark", "Ecuador",
         "Estonia", "Jamaica", "Jordan", "Latvia", "Mongolia", "Nigeria", "Oman", "Panama",
         "Qatar", "Rwanda", "Serbia", "Tunisia", "Uganda", "Zambia"],
        [(C, "The capital of {x} is"), (C, "The official language of {x} is"),
         (C, "The currency of {x} is called the"), (C, "{x} shares a border with"),
         (Q, "Q: What is the largest city in {x}?\nA:"),
         (Q, "Question: Which continent is {x} in?\nAnswer:"),
         (H, "What is the weather usually like in {x} in winter?"),
         (H, "Can you suggest three things to see on a first trip to {x}?"),
         (C, "The national dish of {x} is"), (C, "The population of {x} is about"),
         (H, "Tell me briefly about the history of {x}."),
         (Q, "Q: What is the head of state of {x} called?\nA:")],
    ),
    "city": (
        ["Paris", "Tokyo", "Nairobi", "Toronto", "Lima", "Oslo", "Mumbai", "Cairo", "Sydney",
         "Istanbul", "Berlin", "Chicago", "Seoul", "Lagos", "Madrid", "Rome", "Bangkok",
         "Buenos Aires", "Dublin", "Vienna", "Prague", "Lisbon", "Athens", "Helsinki",
         "Havana", "Kyoto", "Marseille", "Montreal", "Munich", "Naples", "Osaka", "Porto",
         "Quito", "Seville", "Venice", "Warsaw", "Zurich", "Boston", "Denver", "Edinburgh",
         "Florence", "Glasgow", "Hanoi", "Jakarta", "Krakow", "Lyon", "Manila", "Nice"],
        [(C, "{x} is a city in"), (C, "The most famous landmark in {x} is"),
         (C, "The river that flows through {x} is"), (Q, "Q: Which country is {x} in?\nA:"),
         (H, "What is the best way to get around {x} without a car?"),
         (H, "Which neighbourhoods in {x} are good for a walk?"),
         (C, "The airport of {x} is called"), (Q, "Question: What is {x} known for?\nAnswer:"),
         (C, "The mayor of {x} is"), (H, "Plan a one-day itinerary for {x}.")],
    ),
    "element": (
        ["hydrogen", "helium", "carbon", "nitrogen", "oxygen", "sodium", "iron", "copper",
         "silver", "gold", "mercury", "lead", "uranium", "neon", "calcium", "zinc", "tin",
         "platinum", "silicon", "chlorine", "magnesium", "potassium", "titanium", "lithium"],
        [(C, "The chemical symbol of {x} is"), (C, "The atomic number of {x} is"),
         (Q, "Q: Is {x} a metal?\nA:"), (C, "At room temperature {x} is a"),
         (H, "What is {x} used for in industry?"), (C, "{x} was discovered by"),
         (Q, "Question: What is the melting point of {x}?\nAnswer:")],
    ),
    "animal": (
        ["the elephant", "the dolphin", "the eagle", "the honeybee", "the octopus", "the wolf",
         "the penguin", "the giraffe", "the salmon", "the bat", "the tortoise", "the cheetah",
         "the koala", "the owl", "the shark", "the ant", "the camel", "the parrot", "the frog",
         "the whale", "the horse", "the crow", "the lion", "the beaver"],
        [(C, "The natural habitat of {x} is"), (C, "The diet of {x} consists mainly of"),
         (Q, "Q: How long does {x} usually live?\nA:"),
         (H, "Why is {x} important for its ecosystem?"),
         (C, "A group of animals like {x} is called a"), (C, "The closest relative of {x} is"),
         (H, "Tell me a surprising fact about {x}.")],
    ),
    "planet": (
        ["Mercury", "Venus", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune", "the Moon",
         "the Sun", "Pluto", "Titan", "Europa"],
        [(C, "The distance from Earth to {x} is"), (C, "The surface of {x} is"),
         (Q, "Q: How many moons does {x} have?\nA:"), (H, "Could humans ever live on {x}?"),
         (C, "The first spacecraft to visit {x} was")],
    ),
    "science_concept": (
        ["photosynthesis", "gravity", "evolution", "plate tectonics", "the greenhouse effect",
         "electricity", "magnetism", "osmosis", "relativity", "entropy", "DNA replication",
         "the water cycle", "nuclear fusion", "inflation in cosmology", "vaccination",
         "the immune system", "quantum entanglement", "climate change", "erosion",
         "natural selection", "radioactivity", "combustion", "friction", "sound waves"],
        [(H, "Explain {x} in simple terms."), (C, "The basic idea of {x} is that"),
         (Q, "Q: Who first described {x}?\nA:"), (H, "Give me an everyday example of {x}."),
         (C, "Scientists study {x} by"), (Q, "Question: Why does {x} matter?\nAnswer:")],
    ),
    "historical_figure": (
        ["Napoleon Bonaparte", "Cleopatra", "Leonardo da Vinci", "Marie Curie",
         "Abraham Lincoln", "Mahatma Gandhi", "Julius Caesar", "Queen Victoria",
         "Nelson Mandela", "Isaac Newton", "Joan of Arc", "Genghis Khan", "Albert Einstein",
         "Charles Darwin", "Winston Churchill", "Confucius", "Ada Lovelace", "Galileo Galilei",
         "Catherine the Great", "Simon Bolivar", "Frida Kahlo", "Nikola Tesla",
         "Florence Nightingale", "Martin Luther King Jr."],
        [(C, "{x} was born in"), (C, "{x} is best known for"), (C, "{x} died in"),
         (Q, "Q: In which century did {x} live?\nA:"),
         (H, "What can we learn from the life of {x}?"),
         (C, "The profession of {x} was"), (Q, "Question: Who influenced {x}?\nAnswer:"),
         (H, "Summarise the achievements of {x} in two sentences.")],
    ),
    "event": (
        ["the French Revolution", "the fall of the Berlin Wall", "the Moon landing",
         "the Industrial Revolution", "the Renaissance", "World War I", "the Black Death",
         "the signing of the Magna Carta", "the invention of the printing press",
         "the discovery of penicillin", "the first Olympic Games", "the Cold War",
         "the building of the pyramids", "the Silk Road trade", "the Great Depression",
         "the American Civil War"],
        [(C, "{x} took place in"), (C, "The main cause of {x} was"),
         (Q, "Q: What were the consequences of {x}?\nA:"),
         (H, "Why do historians still discuss {x}?"),
         (C, "A key figure in {x} was"), (H, "Describe {x} for a ten-year-old.")],
    ),
    "artist": (
        ["Mozart", "Beethoven", "Picasso", "Van Gogh", "Shakespeare", "Jane Austen",
         "Bach", "Rembrandt", "Chopin", "Tolstoy", "Monet", "Dickens", "Michelangelo",
         "Mark Twain", "Vivaldi", "Hokusai", "Tchaikovsky", "Cervantes", "Dante", "Goethe"],
        [(C, "The most famous work of {x} is"), (C, "{x} was famous as a"),
         (Q, "Q: Where did {x} spend most of their life?\nA:"),
         (H, "Recommend a good first work by {x}."),
         (C, "The style of {x} is often described as"), (H, "Why is {x} still popular today?")],
    ),
    "sport": (
        ["football", "tennis", "basketball", "cricket", "chess", "swimming", "cycling",
         "baseball", "rugby", "golf", "volleyball", "table tennis", "skiing", "boxing",
         "fencing", "rowing", "badminton", "ice hockey", "marathon running", "surfing"],
        [(C, "The rules of {x} say that"), (C, "A team in {x} has"),
         (Q, "Q: Where was {x} invented?\nA:"), (H, "How can a beginner get better at {x}?"),
         (C, "The most important tournament in {x} is"), (H, "What equipment do I need for {x}?")],
    ),
    "technology": (
        ["Python", "the internet", "the telephone", "JavaScript", "the transistor",
         "electric cars", "solar panels", "the World Wide Web", "Linux", "blockchain",
         "3D printing", "GPS", "email", "the microwave oven", "nuclear power", "Wi-Fi",
         "the steam engine", "machine learning", "the refrigerator", "databases"],
        [(C, "{x} was invented by"), (C, "The main advantage of {x} is"),
         (Q, "Q: How does {x} work?\nA:"), (H, "What are the downsides of {x}?"),
         (C, "Before {x}, people used"), (H, "Explain {x} to my grandmother.")],
    ),
    "food": (
        ["bread", "pizza", "sushi", "curry", "cheese", "chocolate", "coffee", "tea",
         "pasta", "rice", "yogurt", "tofu", "olive oil", "honey", "tacos", "paella",
         "dumplings", "pancakes", "lentil soup", "apple pie"],
        [(C, "The main ingredient of {x} is"), (H, "How do I make {x} at home?"),
         (Q, "Q: Where does {x} come from originally?\nA:"), (C, "People usually eat {x} with"),
         (H, "Is {x} healthy?"), (C, "The best way to store {x} is")],
    ),
    "howto": (
        ["learn a new language", "save money each month", "fall asleep faster",
         "write a cover letter", "change a flat tyre", "start running", "grow tomatoes",
         "clean a cast iron pan", "prepare for a job interview", "train a puppy",
         "reduce stress", "study for an exam", "fix a slow computer", "paint a room",
         "plan a wedding", "make new friends in a new city", "keep houseplants alive",
         "negotiate a salary", "bake sourdough", "organise a closet"],
        [(H, "How do I {x}?"),
        (H, "What is the fastest way to {x}?"), (C, "The first step to {x} is"),
         (Q, "Q: What mistakes do people make when they try to {x}?\nA:"),
         (H, "Give me a checklist to {x}.")],
    ),
    "writing": (
        ["the ocean", "autumn", "a lost key", "friendship", "a city at night", "the first snow",
         "a robot learning to paint", "an old lighthouse", "coffee in the morning",
         "a train journey", "the desert", "a birthday party", "rain on a window",
         "a forgotten letter", "the last day of school"],
        [(H, "Write a haiku about {x}."), (H, "Write a short story about {x}."),
         (C, "Here is a poem about {x}:"), (H, "Give me three titles for an essay about {x}."),
         (C, "Once upon a time, there was {x} that")],
    ),
    "language": (
        ["hello", "thank you", "good morning", "friend", "water", "house", "book", "love",
         "cat", "tomorrow", "beautiful", "music"],
        [(H, "How do you say '{x}' in Spanish?"), (C, "The word '{x}' in French is"),
         (Q, "Q: What is the origin of the word '{x}'?\nA:"),
         (H, "Use the word '{x}' in a sentence."),
         (C, "A synonym for '{x}' is")],
    ),
    "economy": (
        ["interest rates", "inflation", "the stock market", "a recession", "taxes",
         "international trade", "unemployment", "cryptocurrency", "a mortgage", "pensions",
         "supply and demand", "a budget deficit"],
        [(H, "What is {x} and why does it matter?"), (C, "When central banks change {x},"),
         (Q, "Q: How does {x} affect ordinary people?\nA:"), (C, "Economists measure {x} by"),
         (H, "Explain {x} with an example.")],
    ),
    "health": (
        ["a cold", "headaches", "back pain", "vitamin D", "sleep", "hydration", "exercise",
         "blood pressure", "allergies", "meditation", "sunburn", "a sprained ankle"],
        [(H, "What helps with {x}?"), (C, "Doctors say that {x}"),
         (Q, "Q: When should I see a doctor about {x}?\nA:"), (H, "Give me some tips about {x}."),
         (C, "A common myth about {x} is that")],
    ),
}

# the held-out split: subjects and templates that no train prompt uses
HELDOUT: dict[str, tuple[list[str], list[tuple[str, str]]]] = {
    "country": (
        ["Italy", "Germany", "China", "Nicaragua", "Bhutan", "Slovenia", "Madagascar",
         "Paraguay", "Laos", "Namibia", "Georgia", "Armenia"],
        [(C, "The highest mountain in {x} is"),
        (Q, "Q: What do people in {x} eat for breakfast?\nA:"),
         (H, "Is {x} a good place to study abroad?"), (C, "Tourists who visit {x} often")],
    ),
    "person": (
        ["Aristotle", "Mary Shelley", "Alexander the Great", "Rosalind Franklin",
         "Wolfgang Pauli", "Harriet Tubman", "Akbar", "Hypatia", "Johannes Kepler",
         "Emily Dickinson"],
        [(C, "The greatest achievement of {x} was"), (Q, "Q: Who were the teachers of {x}?\nA:"),
         (H, "Write a short biography of {x}."), (C, "Late in life, {x}")],
    ),
    "thing": (
        ["the violin", "a bicycle", "the compass", "a telescope", "the piano", "paper",
         "glass", "the wheel", "concrete", "a clock", "the umbrella", "soap"],
        [(C, "The history of {x} begins"), (H, "How is {x} made?"),
         (Q, "Q: What did people use before {x}?\nA:"), (C, "Modern versions of {x} are")],
    ),
    "activity": (
        ["knitting", "birdwatching", "rock climbing", "pottery", "sailing", "juggling",
         "photography", "gardening", "calligraphy", "kayaking"],
        [(H, "I want to try {x}. Where do I start?"), (C, "The hardest part of {x} is"),
         (Q, "Q: How much does {x} cost as a hobby?\nA:"), (C, "People who enjoy {x} usually")],
    ),
    "math": (
        ["7 times 8", "the square root of 81", "15 percent of 200", "12 plus 29",
         "100 divided by 4", "3 to the power of 4", "the sum of the angles of a triangle",
         "half of 350"],
        [(Q, "Q: What is {x}?\nA:"),
        (C, "If you work out {x}, you get"), (H, "Please calculate {x}.")],
    ),
}

GENERIC = [  # short free-standing prompts without a subject (train split)
    (C, "The weather today is"), (C, "My favourite food is"), (C, "Once upon a time there was"),
    (C, "In the morning I usually"), (C, "She opened the door and"), (C, "Water boils at"),
    (C, "The meeting starts at"), (C, "The best way to learn is"), (H, "Hi! How are you today?"),
    (H, "Tell me a joke."), (H, "What should I cook for dinner tonight?"),
    (H, "Can you help me write an email to my landlord?"), (H, "What is the meaning of life?"),
    (H, "Summarise the plot of a famous novel."), (H, "What are some good habits for programmers?"),
    (C, "The year 2000 was"), (C, "The sky is blue because"), (C, "A good night's sleep"),
    (Q, "Q: How many days are there in a leap year?\nA:"), (Q, "Q: What is two plus two?\nA:"),
    (Q, "Question: What colour do you get by mixing blue and yellow?\nAnswer:"),
    (C, "The recipe calls for two cups of"), (C, "The train to the airport leaves"),
    (H, "Recommend a book for a long flight."), (H, "Translate 'good night' into German."),
    (C, "According to the latest report,"), (C, "The company announced today that"),
    (C, "In conclusion, the results show"), (C, "The first rule of cooking is"),
    (H, "What is the difference between weather and climate?"),
]


def build() -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    seen: set[str] = set()

    def emit(split: str, domain: str, form: str, prompt: str) -> None:
        if prompt not in seen:
            seen.add(prompt)
            rows.append({"prompt": prompt, "form": form, "domain": domain, "split": split})

    for split, domains in (("train", DOMAINS), ("heldout", HELDOUT)):
        for domain, (subjects, templates) in domains.items():
            for subject in subjects:
                for form, template in templates:
                    text = template.replace("{x}", subject)
                    emit(split, domain, form, text[0].upper() + text[1:])
    for form, text in GENERIC:
        emit("train", "generic", form, text)
    random.Random(0).shuffle(rows)
    return rows


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = build()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "heldout")}
    logger.info("wrote %s: %s", OUT, counts)


if __name__ == "__main__":
    main()
