"""DocVQA (lmms-lab/DocVQA, config DocVQA: questionId, question, question_types, image, docId, ucsf_document_id,
ucsf_document_page_no, answers, data_split) -> canonical rows. The test split has no answers: counted and skipped."""

from data_scripts.common import Reject, build_arg_parser, infer_question_type, run_converter

SOURCE = "docvqa"


def clean_answers(values) -> list[str]:
    return [a.strip() for a in values or [] if isinstance(a, str) and a.strip()]


def convert_docvqa_example(ex, idx, split):
    question = (ex.get("question") or "").strip()
    if not question:
        raise Reject("missing_question")
    answers = clean_answers(ex.get("answers"))
    if not answers:
        raise Reject("missing_answer")
    qid = ex.get("questionId")
    meta = {
        k: ex.get(k)
        for k in ("questionId", "docId", "ucsf_document_id", "ucsf_document_page_no", "question_types", "data_split")
    }
    return {
        "id": f"{SOURCE}-{split}-{qid if qid is not None else idx}",
        "question": question,
        "answers": answers,
        "question_type": infer_question_type(question, answers),
        "meta": meta,
    }


def main(argv=None):
    args = build_arg_parser(__doc__, default_source="lmms-lab/DocVQA", default_config="DocVQA").parse_args(argv)
    return run_converter(args, convert_docvqa_example, source_name=SOURCE)


if __name__ == "__main__":
    main()
