"""Write examples/sentiment_train.jsonl and examples/sentiment_test.jsonl: synthetic financial-news sentiment.

    python scripts/make_sentiment_data.py

The rows are made up (no real news is copied), in FinLoRA's sentiment format: `context` is the instruction
with the sentence, `target` one of negative/neutral/positive, a third each. Sentences are composed from
companies, events and phrasings; the test rows use companies and sentence frames the training rows never
show, so a model that learns them has learned the labels' meaning, not the names. Deterministic (seeded).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = (
    "Instruction: What is the sentiment of this news? Please choose an answer from "
    "{{negative/neutral/positive}}.\nInput: {}\nAnswer: "
)
TRAIN_COMPANIES = [
    "Nordea", "Fortum", "Kone", "Wartsila", "Stora Enso", "UPM", "Outokumpu", "Metso", "Elisa", "Sampo",
    "Orion", "Kesko", "Tieto", "Cargotec", "Huhtamaki", "Valmet", "Neste", "Finnair", "Uponor", "Ramirent",
    "Ahlstrom", "Aspo", "Componenta", "Efore", "Raisio", "Rapala", "Stockmann", "Tecnotree", "YIT", "Alma Media",
]  # fmt: skip
TEST_COMPANIES = [
    "Atria", "Basware", "Citycon", "Digia", "Exel", "Glaston", "Incap", "Lassila", "Marimekko", "Okmetic",
    "Ponsse", "Scanfil", "Talvivaara", "Vaisala", "Aspocomp",
]  # fmt: skip
EVENTS = {
    "positive": [
        "net profit rose {pct} % to EUR {m} million", "operating profit increased to EUR {m} million",
        "net sales grew by {pct} %", "won a EUR {m} million order", "raised its full-year outlook",
        "signed a EUR {m} million contract", "reported record quarterly sales", "beat market expectations",
        "increased its dividend", "improved its operating margin to {pct} %", "doubled its order backlog",
        "returned to profit", "shares jumped {pct} %",
    ],
    "negative": [
        "net profit fell {pct} % to EUR {m} million", "swung to an operating loss of EUR {m} million",
        "net sales decreased by {pct} %", "will cut {n} jobs", "lowered its full-year outlook",
        "issued a profit warning", "reported a pretax loss of EUR {m} million", "lost a major customer",
        "shares slumped {pct} %", "cancelled its dividend", "missed market expectations",
        "faces a EUR {m} million writedown", "saw its order intake drop {pct} %",
    ],
    "neutral": [
        "will publish its interim report on {day}", "appointed a new chief financial officer",
        "has its headquarters in {city}", "operates in {k} countries", "employs about {n} people",
        "will hold its annual general meeting on {day}", "changed the name of its subsidiary",
        "moved its listing to the main market", "announced the composition of its nomination board",
        "renewed its board of directors", "said the deal is subject to regulatory approval",
        "will release its results in {month}", "registered its new share capital",
    ],
}  # fmt: skip
TRAIN_FRAMES = ["{c} {e} .", "{c} said {e} .", "In {month} , {c} {e} ."]
TEST_FRAMES = ["According to the company , {c} {e} .", "{c} {e} , the company said on {day} ."]
CITIES = ["Helsinki", "Espoo", "Tampere", "Vantaa", "Oulu", "Turku", "Stockholm"]
MONTHS = ["January", "March", "April", "June", "August", "October", "November"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "3 May", "12 August"]


def sentence(rng: random.Random, companies: list[str], frames: list[str], label: str) -> str:
    event = rng.choice(EVENTS[label]).format(
        pct=rng.randint(3, 60), m=round(rng.uniform(1.5, 250), 1), n=rng.randint(40, 4000),
        k=rng.randint(5, 60), day=rng.choice(DAYS), city=rng.choice(CITIES), month=rng.choice(MONTHS),
    )  # fmt: skip
    return rng.choice(frames).format(
        c=rng.choice(companies), e=event, month=rng.choice(MONTHS), day=rng.choice(DAYS)
    )


def rows(n: int, seed: int, companies: list[str], frames: list[str]) -> list[dict]:
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        label = ("negative", "neutral", "positive")[len(out) % 3]
        text = sentence(rng, companies, frames, label)
        if text not in seen:
            seen.add(text)
            out.append({"context": PROMPT.format(text), "target": label})
    rng.shuffle(out)
    return out


def main() -> None:
    for name, data in (
        ("sentiment_train.jsonl", rows(480, 1, TRAIN_COMPANIES, TRAIN_FRAMES)),
        ("sentiment_test.jsonl", rows(150, 2, TEST_COMPANIES, TEST_FRAMES)),
    ):
        path = ROOT / "examples" / name
        path.write_text("".join(json.dumps(r) + "\n" for r in data))
        print(f"wrote {len(data)} rows to {path}")


if __name__ == "__main__":
    main()
