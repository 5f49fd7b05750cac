"""ChartQA (HuggingFaceM4/ChartQA: image, query, label (list of str), human_or_machine ClassLabel 0=human
1=machine; splits train/val/test) -> canonical rows. `--origin human` keeps only the human-written questions."""

from data_scripts.common import Reject, build_arg_parser, infer_question_type, run_converter

SOURCE = "chartqa"
ORIGINS = ("human", "machine")  # the ClassLabel names, in label order


def origin_name(value) -> str:
    if isinstance(value, int) and 0 <= value < len(ORIGINS):
        return ORIGINS[value]
    if isinstance(value, str) and value in ORIGINS:
        return value
    raise Reject("unknown_origin")


def make_chartqa_converter(keep_origin="all"):
    def convert_chartqa_example(ex, idx, split):
        question = (ex.get("query") or "").strip()
        if not question:
            raise Reject("missing_question")
        answers = [str(a).strip() for a in ex.get("label") or [] if a is not None and str(a).strip()]
        if not answers:
            raise Reject("missing_answer")
        origin = origin_name(ex.get("human_or_machine"))
        if keep_origin != "all" and origin != keep_origin:
            raise Reject(f"filtered_origin_{origin}")
        return {
            "id": f"{SOURCE}-{split}-{idx}",
            "question": question,
            "answers": answers,
            "question_type": infer_question_type(question, answers),
            "meta": {"human_or_machine": origin, "source_index": idx},
        }

    return convert_chartqa_example


def main(argv=None):
    parser = build_arg_parser(__doc__, default_source="HuggingFaceM4/ChartQA")
    parser.add_argument("--origin", choices=("all",) + ORIGINS, default="all", help="human: ChartQA-H only")
    args = parser.parse_args(argv)
    return run_converter(args, make_chartqa_converter(args.origin), source_name=SOURCE, extra={"origin": args.origin})


if __name__ == "__main__":
    main()
