"""TextVQA (lmms-lab/textvqa or facebook/textvqa: image_id, question_id, question, question_tokens, image,
image_width, image_height, flickr_*_url, answers (10 per question), image_classes, set_name, ocr_tokens)."""

from collections import Counter

from data_scripts.common import Reject, build_arg_parser, infer_question_type, run_converter

SOURCE = "textvqa"


def majority_answer(answers: list[str]) -> str:
    """The most frequent of the 10 annotator answers (first seen wins ties): the one the model is trained on."""
    counts = Counter(answers)
    return max(answers, key=lambda a: (counts[a], -answers.index(a)))


def convert_textvqa_example(ex, idx, split):
    question = (ex.get("question") or "").strip()
    if not question:
        raise Reject("missing_question")
    # All 10 answers stay (with repeats) because VQA accuracy counts matching annotators; the test split has "".
    answers = [a.strip() for a in ex.get("answers") or [] if isinstance(a, str) and a.strip()]
    if not answers:
        raise Reject("missing_answer")
    target = majority_answer(answers)
    qid = ex.get("question_id")
    meta = {k: ex.get(k) for k in ("question_id", "image_id", "image_classes", "set_name", "ocr_tokens")}
    return {
        "id": f"{SOURCE}-{split}-{qid if qid is not None else idx}",
        "question": question,
        "answers": answers,
        "target": target,
        "question_type": infer_question_type(question, [target]),
        "meta": meta,
    }


def main(argv=None):
    args = build_arg_parser(__doc__, default_source="lmms-lab/textvqa").parse_args(argv)
    return run_converter(args, convert_textvqa_example, source_name=SOURCE)


if __name__ == "__main__":
    main()
