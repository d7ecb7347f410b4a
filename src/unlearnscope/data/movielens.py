"""MovieLens as question/answer text: `movielens:<folder>`.

Reads a GroupLens folder in the `ml-100k` layout (`u.data` tab-separated, `u.item` and `u.user`
`|`-separated, latin-1) or the `ml-1m` layout (`ratings.dat`, `movies.dat`, `users.dat`,
`::`-separated). For each user, the last `candidates_per_user` ratings (by time) that have
`history` earlier ratings become samples (`c0` the earliest of them; the latest rating is
always one): the question lists the user's `history` previous ratings and asks whether the
user will like the candidate movie; the answer is "Yes" when the rating is >= 4, else "No". Forgetting a user
means forgetting all of that user's samples: `split=forget` keeps the users chosen by
`forget_users` (a count of randomly drawn users, seeded) or `users` (explicit ids), `split=retain`
the others, `split=all` everyone.

GroupLens forbids redistribution of these files: read them from the user's own folder only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from unlearnscope.data.sample import Sample
from unlearnscope.errors import DataError


@dataclass(frozen=True)
class Rating:
    user: int
    movie: int
    rating: int
    time: int


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError("MovieLens file not found", source=str(path))
    return path.read_text(encoding="latin-1").splitlines()


def _split(path: Path, number: int, line: str, sep: str, n_fields: int) -> list[str]:
    parts = line.split(sep)
    if len(parts) < n_fields:
        raise DataError(f"expected {n_fields} '{sep}'-separated fields, got {len(parts)}",
                        source=str(path), line=number)
    return parts


def _int(path: Path, number: int, value: str, field: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"expected an integer, got '{value}'", source=str(path), line=number,
                        field=field) from None


def _read_folder(folder: Path) -> tuple[list[Rating], dict[int, str], dict[int, str]]:
    """Ratings, movie titles and user descriptions from an ml-100k or ml-1m folder."""
    if (folder / "u.data").is_file():
        layout = {"ratings": ("u.data", "\t"), "movies": ("u.item", "|"),
                  "users": ("u.user", "|"), "user_fields": ("age", "gender", "occupation")}
    elif (folder / "ratings.dat").is_file():
        layout = {"ratings": ("ratings.dat", "::"), "movies": ("movies.dat", "::"),
                  "users": ("users.dat", "::"), "user_fields": ("gender", "age", "occupation")}
    else:
        raise DataError("not a MovieLens folder (no u.data or ratings.dat)", source=str(folder))
    name, sep = layout["ratings"]
    path = folder / name
    ratings = []
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        user, movie, rating, time = _split(path, number, line, sep, 4)[:4]
        ratings.append(Rating(_int(path, number, user, "user_id"),
                              _int(path, number, movie, "item_id"),
                              _int(path, number, rating, "rating"),
                              _int(path, number, time, "timestamp")))
    name, sep = layout["movies"]
    path = folder / name
    titles = {}
    for number, line in enumerate(_read_lines(path), start=1):
        if line.strip():
            parts = _split(path, number, line, sep, 2)
            titles[_int(path, number, parts[0], "movie_id")] = parts[1]
    name, sep = layout["users"]
    path = folder / name
    users = {}
    for number, line in enumerate(_read_lines(path), start=1):
        if line.strip():
            parts = _split(path, number, line, sep, 4)
            fields = dict(zip(layout["user_fields"], parts[1:4], strict=True))
            users[_int(path, number, parts[0], "user_id")] = (
                f"a {fields['gender']} user aged {fields['age']} ({fields['occupation']})")
    return ratings, titles, users


def load_movielens(folder: str, *, split: str = "all", history: int = 10,
                   candidates_per_user: int = 3, forget_users: int = 10,
                   users: str | None = None, seed: int = 0) -> list[Sample]:
    if split not in ("all", "forget", "retain"):
        raise DataError(f"unknown split '{split}' (all, forget, retain)",
                        source=f"movielens:{folder}", field="split")
    ratings, titles, descriptions = _read_folder(Path(folder))
    by_user: dict[int, list[Rating]] = {}
    for rating in ratings:
        by_user.setdefault(rating.user, []).append(rating)
    eligible = sorted(u for u, rs in by_user.items() if len(rs) > history)
    if users is not None:
        chosen = {int(u) for u in str(users).split(",") if u.strip()}
        missing = chosen - set(eligible)
        if missing:
            raise DataError(f"users without enough ratings or unknown: {sorted(missing)}",
                            source=f"movielens:{folder}", field="users")
    else:
        chosen = set(random.Random(seed).sample(eligible, min(forget_users, len(eligible))))
    samples = []
    for user in eligible:
        if (split == "forget") != (user in chosen) and split != "all":
            continue
        history_sorted = sorted(by_user[user], key=lambda r: (r.time, r.movie))
        n_candidates = min(candidates_per_user, len(history_sorted) - history)
        for c in range(n_candidates):
            position = len(history_sorted) - n_candidates + c
            candidate = history_sorted[position]
            seen = history_sorted[position - history: position]
            listing = "; ".join(f"{titles.get(r.movie, f'movie {r.movie}')}: {r.rating}/5"
                                for r in seen)
            question = (f"User {user}, {descriptions.get(user, 'a user')}, recently rated: "
                        f"{listing}. Will this user like "
                        f"{titles.get(candidate.movie, f'movie {candidate.movie}')}?")
            samples.append(Sample(
                id=f"u{user:05d}-c{c}",
                question=question,
                answer="Yes" if candidate.rating >= 4 else "No",
                extra={"user": user, "movie": candidate.movie, "rating": candidate.rating},
            ))
    return samples
