"""Image-caption pairs for stage 1 (projector alignment): LLaVA-Pretrain style JSON (id, image path,
conversations [{from: human, value: "...<image>"}, {from: gpt, value: caption}]) + --image_root, or any `datasets`
caption set with an image column and a caption/text/captions column. The prompt is drawn by a seeded RNG."""

import random

from data_scripts.common import Reject, build_arg_parser, run_converter

SOURCE = "captions"
CAPTION_PROMPTS = (
    "Describe the image briefly.",
    "Write a short caption for this image.",
    "What is shown in this image? Answer in one sentence.",
    "Give a brief description of the picture.",
    "Summarize the visual content of the image.",
    "Provide a one-line caption for the image.",
)


def caption_of(ex) -> str:
    for turn in ex.get("conversations") or []:
        if isinstance(turn, dict) and turn.get("from") == "gpt":
            return (turn.get("value") or "").strip()
    for key in ("caption", "text"):
        if isinstance(ex.get(key), str):
            return ex[key].strip()
    captions = ex.get("captions")
    if isinstance(captions, list) and captions and isinstance(captions[0], str):
        return captions[0].strip()
    return ""


def make_caption_converter(seed=0):
    def convert_caption_example(ex, idx, split):
        caption = caption_of(ex)
        if not caption:
            raise Reject("missing_caption")
        row_id = str(ex.get("id") if ex.get("id") is not None else idx)
        # Seeded per row (not per call order): the same row gets the same prompt under any num_proc / streaming.
        prompt = random.Random(f"{seed}-{split}-{row_id}").choice(CAPTION_PROMPTS)
        return {
            "id": f"{SOURCE}-{split}-{row_id}",
            "question": prompt,
            "answers": [caption],
            "question_type": "caption",
            "meta": {"source_id": row_id, "image": ex.get("image") if isinstance(ex.get("image"), str) else None},
        }

    return convert_caption_example


def main(argv=None):
    parser = build_arg_parser(__doc__, default_source="liuhaotian/LLaVA-Pretrain")
    parser.add_argument("--image_root", default=None, help="folder that relative image paths are resolved against")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompt choice")
    args = parser.parse_args(argv)
    return run_converter(
        args,
        make_caption_converter(args.seed),
        source_name=SOURCE,
        image_root=args.image_root,
        extra={"seed": args.seed, "prompts": list(CAPTION_PROMPTS)},
    )


if __name__ == "__main__":
    main()
