"""A demo run's model on 52 requests worded by hand, outside the shapes world's template banks and phrasing space.

    python tools/probe_requests.py RUN [RUN ...]

Each request is a user's first message (no history), answered greedily in the model's own chat format; the
image tasks and VQA get one test image of the run's world. It prints the share routed to the right task (none
for VQA and chat), the exact match of the prompts inside the tags, the score by kind and every miss. A probe of
how a run reads wordings nobody wrote into the world, not a benchmark to tune against: 52 requests are a
handful, and a list tuned to is a list memorised.
"""
import sys
from pathlib import Path
from PIL import Image
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the llmbind of this checkout
from llmbind.evaluate import load_eval_model, call_signature, normalize_prompt
from llmbind.tokens import parse_response

GEN = [("Hey there, could I get a picture showing a small red circle on the left?", "a small red circle on the left"),
       ("I'm making a poster. Please draw me a large blue square at the bottom.", "a large blue square at the bottom"),
       ("Generate an image: a small yellow triangle at the top right.", "a small yellow triangle at the top right"),
       ("Would you mind creating an image of a large green star in the middle?", "a large green star in the middle"),
       ("Paint a small white square at the top.", "a small white square at the top"),
       ("Show me what a large orange circle on the right would look like.", "a large orange circle on the right"),
       ("Can I have an image with a small purple triangle at the bottom left?", "a small purple triangle at the bottom left"),
       ("Make a drawing of a large pink star at the top left for my kid.", "a large pink star at the top left")]
AUD = [("Could you make a sound of a dog barking in a forest?", "a dog barking in a forest"),
       ("I want to hear rain falling at night.", "rain falling at night"),
       ("Please generate audio of a bell ringing far away.", "a bell ringing far away"),
       ("Play me a recording of birds chirping at the beach.", "birds chirping at the beach"),
       ("Create an audio clip of a piano playing in a small room.", "a piano playing in a small room"),
       ("Give me the sound of thunder rumbling in a busy street.", "thunder rumbling in a busy street")]
VID = [("Make me a short video of a red circle growing bigger.", "a red circle growing bigger"),
       ("Could you animate a blue star spinning slowly?", "a blue star spinning slowly"),
       ("I'd like a clip of a green square bouncing up and down.", "a green square bouncing up and down"),
       ("Please create a video of a yellow triangle sliding to the left.", "a yellow triangle sliding to the left"),
       ("Show an animation of a purple hexagon moving from left to right.", "a purple hexagon moving from left to right"),
       ("Film a white star falling from the top for me.", "a white star falling from the top")]
SEG = ["Can you segment the circle in this picture?", "Please give me a mask of the star.", "Outline the square for me with a mask.",
       "Which pixels belong to the triangle? Show me its mask.", "Cut the biggest shape out of this image.", "Segment everything that is a star."]
DET = ["Put a bounding box around the circle.", "Where is the star? Box it for me.", "Can you detect the square and give me its box?",
       "Draw a box around the triangle, please.", "Find the star and mark it with a rectangle.", "Give me the box coordinates of the circle."]
CLS = ["What kind of shape is the small one?", "Classify the object on the left.", "Which class does the large shape belong to?",
       "Tell me the category of the shape at the top.", "What class is the shape in the middle?", "Label the object on the right with its class."]
VQA = ["How many shapes are in this image?", "What colour is the circle?", "Is there a star in the picture?",
       "Describe this image in a few words.", "What is the shape at the top?", "Which shape is the biggest?"]
CHAT = ["Good morning!", "How are you today?", "Thanks, that's all for now.", "What can you do?", "Tell me a joke.",
        "Who made you?", "Nice, I like it!", "Bye!"]

def cases(image):
    out = [(q, "gen", p, None) for q, p in GEN] + [(q, "audio", p, None) for q, p in AUD] + [(q, "video", p, None) for q, p in VID]
    out += [(q, "seg", None, image) for q in SEG] + [(q, "det", None, image) for q in DET] + [(q, "cls", None, image) for q in CLS]
    out += [(q, "none", None, image) for q in VQA] + [(q, "none", None, None) for q in CHAT]
    return out

def kind(task, img): return {"gen": "gen", "audio": "audio", "video": "video", "seg": "seg", "det": "det", "cls": "cls"}.get(task, "vqa" if img is not None else "chat")

def score(task: str, prompt, answer: str) -> tuple[bool, bool | None]:
    "(routed right, prompt exact or None): the first call's task must be `task`; 'none' wants no call at all."
    sig = call_signature(answer)
    routed = sig.split("+")[0] == task and (task != "none" or sig == "none")
    if prompt is None: return routed, None
    calls = parse_response(answer)
    return routed, routed and normalize_prompt(calls[0].prompt) == normalize_prompt(prompt)

def probe(run, max_new_tokens: int = 48) -> dict:
    "Every request of `cases` through RUN/model: dispatch and exact match overall, the score by kind, the misses."
    run = Path(run)
    if not (run / "model").is_dir(): raise SystemExit(f"{run} has no model/ folder; pass a run written by `llmbind demo`")
    images = sorted((run / "data" / "grounded" / "images").glob("det_test_*.png"))
    if not images: raise SystemExit(f"{run}/data holds no test image (data/grounded/images/det_test_*.png)")
    model, image = load_eval_model(run / "model"), Image.open(images[0]).convert("RGB")
    by, exact, misses = {}, [], []
    for q, task, prompt, img in cases(image):
        text = model.generate(q, image=img, max_new_tokens=max_new_tokens).text
        routed, ok = score(task, prompt, text)
        by.setdefault(kind(task, img), []).append(routed)
        if ok is not None: exact.append(ok)
        if not routed: misses.append((kind(task, img), q, text))
    n = sum(len(v) for v in by.values())
    return {"n": n, "dispatch": sum(sum(v) for v in by.values()) / n, "exact": sum(exact) / len(exact),
            "by_kind": {k: (sum(v), len(v)) for k, v in by.items()}, "misses": misses}

def main(argv):
    if not argv: raise SystemExit(__doc__)
    for run in argv:
        r = probe(run)
        print(f"{run}: dispatch {r['dispatch']:.1%} of {r['n']}; prompt exact match {r['exact']:.1%}; by kind " +
              ", ".join(f"{k} {a}/{b}" for k, (a, b) in r["by_kind"].items()))
        for k, q, t in r["misses"]: print(f"   [{k}] {q!r} -> {t[:90]!r}")

if __name__ == "__main__":
    main(sys.argv[1:])
