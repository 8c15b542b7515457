"""Answer extraction and grading: hand-decided cases, math-verify semantics, and thread safety."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from math_verify import parse, verify

from caspo_jax.data import grading
from caspo_jax.data.grading import extract_answer, grade

# (model output, reference, expected), decided by hand. These go through math-verify.
MATH_VERIFY = [
    # fractions and decimals
    ("so $\\boxed{\\frac{1}{2}}$", "\\frac{1}{2}", True),
    ("\\boxed{\\dfrac{1}{2}}", "\\frac12", True),
    ("\\boxed{\\tfrac{3}{4}}", "0.75", True),
    ("\\boxed{0.5}", "\\frac{1}{2}", True),
    ("\\boxed{1/2}", "0.5", True),
    ("\\boxed{2.50}", "2.5", True),
    ("\\boxed{\\frac{2}{4}}", "\\frac{1}{2}", True),
    # percent
    ("\\boxed{10\\%}", "10\\%", True),
    ("\\boxed{0.1}", "10\\%", True),
    # units, degrees, currency
    ("\\boxed{5\\text{ cm}}", "5", True),
    ("\\boxed{90^\\circ}", "90", True),
    ("\\boxed{\\$18.90}", "18.90", True),
    # intervals and sets
    ("\\boxed{[1, 3)}", "[1,3)", True),
    ("\\boxed{(-\\infty, 2] \\cup [5, \\infty)}", "(-\\infty,2]\\cup[5,\\infty)", True),
    ("\\boxed{\\{3, 1, 2\\}}", "\\{1,2,3\\}", True),
    ("\\boxed{3, 1, 2}", "1, 2, 3", True),
    # expressions, tuples, matrices
    ("\\boxed{(x+1)^2}", "x^2+2x+1", True),
    ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}", True),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{1}{2}\\sqrt{3}", True),
    ("\\boxed{x=3}", "3", True),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "(3,\\frac{\\pi}{2})", True),
    ("\\boxed{\\begin{pmatrix} 1 \\\\ -2 \\end{pmatrix}}", "\\begin{pmatrix}1\\\\-2\\end{pmatrix}", True),
    # must NOT match
    ("\\boxed{\\frac{1}{3}}", "0.3", False),
    ("\\boxed{\\sqrt{2}}", "1.41", False),
    ("\\boxed{[1,3]}", "[1,3)", False),
    ("\\boxed{(1,3)}", "[1,3)", False),
    ("\\boxed{\\{1,2\\}}", "\\{1,2,3\\}", False),
    ("\\boxed{x^2+1}", "(x+1)^2", False),
]

# Integer, multiple-choice and yes/no references, extraction styles, and unparsable output.
OTHER = [
    # thousands separators
    ("#### 1,000", "1000", True),
    ("The total is \\boxed{12,345}.", "12345", True),
    ("\\boxed{10,\\!000}", "10000", True),
    ("\\boxed{1{,}000}", "1000", True),
    # plain integers and answer styles
    ("\\boxed{42}", "42", True),
    ("\\boxed{-3}", "-3", True),
    ("The answer is 42.", "42", True),
    ("Janet makes 9 * 2 = 18 dollars.\n#### 18", "18", True),
    ("so we get 7 and finally 13", "13", True),
    ("\\fbox{7}", "7", True),
    ("\\boxed{8.0}", "8", True),
    # AIME zero padding
    ("\\boxed{9}", "009", True),
    ("\\boxed{025}", "25", True),
    ("$d = \\boxed{\\textbf{(073)}}$", "073", True),
    # multiple choice
    ("\\boxed{C}", "C", True),
    ("The answer is (B).", "(B)", True),
    ("\\boxed{\\text{(D)}}", "D", True),
    ("\\boxed{\\textbf{(E)}\\ 42}", "E", True),
    # yes / no
    ("\\boxed{yes}", "yes", True),
    ("So the answer is No.", "no", True),
    ("Frost happens in December, so yes, it is common.", "yes", True),
    # must NOT match
    ("\\boxed{3}", "-3", False),
    ("\\boxed{10}", "100", False),
    ("\\boxed{9}", "090", False),
    ("\\boxed{B}", "C", False),
    ("\\boxed{Charlie}", "C", False),
    ("\\boxed{yes}", "no", False),
    ("\\boxed{7} and later \\boxed{8}", "7", False),
    # unparsable or missing answers grade False
    ("no final answer here", "5", False),
    ("", "5", False),
    ("\\boxed{}", "5", False),
    ("\\boxed{\\frac{", "1", False),
    ("\\boxed{\\invalid{{}}}", "2", False),
    ("I cannot tell.", "yes", False),
]
MATCH = MATH_VERIFY + OTHER


@pytest.mark.parametrize("output, reference, expected", MATCH)
def test_grade(output, reference, expected):
    assert grade(output, reference) is expected


@pytest.mark.parametrize(
    "text, answer",
    [
        ("x = \\boxed{\\frac{1}{\\sqrt{2}}} done", "\\frac{1}{\\sqrt{2}}"),
        ("first \\boxed{1}, then \\boxed{\\{2, 3\\}}", "\\{2, 3\\}"),
        ("our answer is $\\boxed 2$.", "2"),
        ("\\fbox{x+1}", "x+1"),
        ("calc <<2*3=6>>6\n#### 1,234", "1,234"),
        ("The final answer is $\\frac{1}{2}$. Done.", "\\frac{1}{2}"),
        ("The answer is **42**.", "42"),
        ("There are 1,234 cats and 5.5 dogs", "5.5"),
        ("It costs 1,234.", "1234"),
        ("no digits at all", None),
    ],
)
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_worker_threads_agree_with_math_verify_in_main_thread():
    """math-verify with its own (SIGALRM) timeouts in the main thread is the reference."""
    reference = [verify(parse(f"\\boxed{{{r}}}"), parse(o)) for o, r, _ in MATH_VERIFY]
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(lambda case: grade(case[0], case[1]), MATH_VERIFY))
    assert threaded == reference == [expected for _, _, expected in MATH_VERIFY]


def test_huge_powers_grade_false_fast_in_any_thread():
    start = time.monotonic()
    out = []
    worker = threading.Thread(target=lambda: out.append(grade("\\boxed{10^{10^{10}}}", "10")))
    worker.start()
    worker.join(30)
    assert out == [False]
    assert grade("\\boxed{99999999999!}", "1") is False
    assert grade("\\boxed{2^{1009}}", "2^{1009}") is True  # big but evaluable
    assert time.monotonic() - start < 10


def test_deadline_bounds_a_hanging_comparison(monkeypatch):
    def hang(*args, **kwargs):
        while True:
            pass

    monkeypatch.setattr(grading, "verify", hang)
    out = []
    start = time.monotonic()
    worker = threading.Thread(target=lambda: out.append(grade("\\boxed{x+1}", "1+x", timeout_s=0.5)))
    worker.start()
    worker.join(10)
    assert out == [False]
    assert time.monotonic() - start < 3
    deadline = time.monotonic() + 5  # the abandoned grading thread is interrupted, not leaked
    while any(t.name == "caspo-grade" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "caspo-grade" for t in threading.enumerate())
