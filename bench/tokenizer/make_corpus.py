#!/usr/bin/env python3
"""Builds the ~10 MB mixed-text benchmark corpus from files every Debian machine with Python
has, so the benchmark needs no download and is the same on every run:
  - English prose: licence texts and package documentation (/usr/share/common-licenses, /usr/share/doc)
  - code: Python standard library sources
  - many languages and scripts: the translated strings of the gettext catalogs in /usr/share/locale
Documents are separated by blank lines (the benchmark encodes them one at a time).
  make_corpus.py OUT [--mb 10]
"""
import argparse
import gettext
import glob
import gzip
import os
import sysconfig


def read(path):
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            return f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError):
        return None


def take(paths, budget):
    out, used = [], 0
    for path in paths:
        text = read(path)
        if not text or "\0" in text:
            continue
        out.append(text.strip("\n") + "\n\n")
        used += len(out[-1].encode("utf-8"))
        if used >= budget:
            break
    return out, used


def prose(budget):
    paths = sorted(glob.glob("/usr/share/common-licenses/*"))
    paths += sorted(glob.glob("/usr/share/doc/*/copyright")) + sorted(glob.glob("/usr/share/doc/*/README*"))
    paths += sorted(glob.glob("/usr/share/doc/*/changelog*"))
    return take([p for p in paths if os.path.isfile(p)], budget)


def code(budget):
    stdlib = sysconfig.get_paths()["stdlib"]
    paths = sorted(glob.glob(os.path.join(stdlib, "*.py"))) + sorted(glob.glob(os.path.join(stdlib, "*", "*.py")))
    return take(paths, budget)


def translations(budget):
    out, used = [], 0
    catalogs = sorted(glob.glob("/usr/share/locale/*/LC_MESSAGES/*.mo"))
    # Interleave languages so a truncated budget still covers many scripts.
    by_lang = {}
    for path in catalogs:
        by_lang.setdefault(path.split("/")[4], []).append(path)
    queues = [sorted(v) for _, v in sorted(by_lang.items())]
    while queues and used < budget:
        for q in list(queues):
            if not q:
                queues.remove(q)
                continue
            try:
                with open(q.pop(0), "rb") as f:
                    catalog = gettext.GNUTranslations(f)._catalog
            except Exception:
                continue
            texts = [v for k, v in sorted(catalog.items(), key=lambda kv: str(kv[0])) if k and isinstance(v, str) and v.strip()]
            if not texts:
                continue
            doc = "\n".join(texts).strip("\n") + "\n\n"
            out.append(doc)
            used += len(doc.encode("utf-8"))
            if used >= budget:
                break
    return out, used


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--mb", type=float, default=10.0)
    a = ap.parse_args()
    total = int(a.mb * 1e6)
    parts = []
    for make, share in ((prose, 0.40), (code, 0.30), (translations, 0.30)):
        docs, used = make(int(total * share))
        parts.append(docs)
        print(f"{make.__name__}: {len(docs)} documents, {used / 1e6:.2f} MB")
    # Interleave the three kinds document by document.
    mixed = []
    for i in range(max(len(p) for p in parts)):
        for p in parts:
            if i < len(p):
                mixed.append(p[i])
    data = "".join(mixed)
    with open(a.out, "w", encoding="utf-8") as f:
        f.write(data)
    print(f"wrote {a.out}: {len(data.encode('utf-8')) / 1e6:.2f} MB, {len(mixed)} documents")


if __name__ == "__main__":
    main()
