"""Generate the small sentiment dataset used by ``recipes/quickstart.yaml``.

The project ships its own tiny, template-built review snippets (product, movie
and restaurant) so the quickstart runs without downloading anything. Output is
deterministic: the same script always writes the same bytes.

Usage: python examples/make_sentiment_data.py [OUTPUT_CSV]
(default: examples/sentiment.csv next to this script)
"""
import csv
import random
import sys
from pathlib import Path

N_CLEAN = 398  # plus one duplicate and one empty row = 400 rows in the file

SUBJECTS = {
    "movie": ["the film", "this movie", "the sequel", "the soundtrack", "the ending",
              "the lead actor", "the script", "the documentary", "the plot"],
    "product": ["this laptop", "the phone", "the headset", "the battery",
                "the keyboard", "this blender", "the camera", "the vacuum", "the app"],
    "food": ["the pasta", "the pizza", "the coffee", "the dessert", "the soup",
             "the breakfast buffet", "the curry", "the steak"],
    "service": ["the hotel staff", "our waiter", "the service", "the room",
                "the front desk", "the delivery", "the support team"],
}
POS_ADJ = ["great", "excellent", "wonderful", "fantastic", "delightful", "impressive",
           "superb", "lovely", "solid", "brilliant", "charming", "reliable"]
NEG_ADJ = ["terrible", "awful", "disappointing", "dreadful", "mediocre", "poor",
           "bland", "frustrating", "sloppy", "forgettable", "flimsy", "annoying"]
# Negated phrases whose label is the opposite of their headword.
NEG_TO_POS = ["not bad at all", "not disappointing in the slightest", "never boring",
              "far from mediocre", "not a letdown", "not overpriced at all"]
POS_TO_NEG = ["not good", "not worth the money", "not impressive", "hardly enjoyable",
              "not great at all", "never satisfying", "not what I hoped for"]
POS_VP = {
    "movie": ["kept me hooked", "made me laugh out loud", "is worth watching twice"],
    "product": ["works flawlessly", "exceeded my expectations", "is worth every penny"],
    "food": ["was cooked perfectly", "tasted amazing", "made our evening"],
    "service": ["made us feel welcome", "went above and beyond", "made our stay easy"],
}
NEG_VP = {
    "movie": ["put me to sleep", "dragged on forever", "made no sense"],
    "product": ["broke after a week", "is a waste of money", "stopped working quickly"],
    "food": ["arrived cold", "ruined our evening", "tasted stale"],
    "service": ["ignored us for an hour", "ruined our stay", "made everything harder"],
}
INTENSIFIERS = ["really", "absolutely", "truly", "incredibly", "pretty", "quite"]
OPENERS = ["", "", "", "Honestly, ", "Overall, ", "I thought ", "In my opinion, ",
           "To be fair, ", "Frankly, ", "Surprisingly, "]


def clause(rng, domain, positive):
    """One '<subject> <predicate>' clause with the requested sentiment."""
    subject = rng.choice(SUBJECTS[domain])
    kind = rng.random()
    if kind < 0.35:
        adj = rng.choice(POS_ADJ if positive else NEG_ADJ)
        if rng.random() < 0.5:
            adj = f"{rng.choice(INTENSIFIERS)} {adj}"
        pred = f"{rng.choice(['is', 'was'])} {adj}"
    elif kind < 0.6:
        pred = rng.choice(POS_VP[domain] if positive else NEG_VP[domain])
    else:
        pred = f"{rng.choice(['is', 'was'])} {rng.choice(NEG_TO_POS if positive else POS_TO_NEG)}"
    return f"{subject} {pred}"


def sentence(rng, positive):
    domain = rng.choice(sorted(SUBJECTS))
    if rng.random() < 0.2:  # two clauses; the label follows the clause after "but"
        first = clause(rng, domain, not positive)
        text = f"{first}, but {clause(rng, domain, positive)}"
    else:
        text = rng.choice(OPENERS) + clause(rng, domain, positive)
    text = text[0].upper() + text[1:]
    return text + rng.choice([".", ".", ".", "!"])


def build_rows(rng):
    rows, seen = [], set()
    while len(rows) < N_CLEAN:
        positive = len(rows) % 2 == 0  # alternate to keep labels balanced
        text = sentence(rng, positive)
        if text.lower() in seen:
            continue
        seen.add(text.lower())
        rows.append((text, "positive" if positive else "negative"))
    rng.shuffle(rows)
    # Deliberately messy rows for the cleaning step, at fixed positions.
    rows[50] = (f"  {rows[50][0]}   ", rows[50][1])  # leading/trailing whitespace
    rows.insert(150, rows[20])  # exact duplicate of an earlier row
    rows.insert(300, ("", "positive"))  # empty text
    return rows


def main():
    default = Path(__file__).resolve().parent / "sentiment.csv"
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    rows = build_rows(random.Random(13))
    with open(out, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
