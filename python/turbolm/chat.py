"""`turbolm chat PATH`: chat with a model in the terminal.

Each round sends only its own prompt; the session's history stays in the engine's KV cache
(sequence_start=False, with `step` = the tokens the history holds, so the engine continues it
exactly). The answer streams token by token through the incremental detokenizer, so a UTF-8
character is never printed half. `end` ends the session (frees its blocks) and starts anew,
`exit` quits, Ctrl-C stops an answer. A warning comes before the session length runs out.
"""
from __future__ import annotations

import sys
from typing import Optional

from turbolm.errors import UserError

HELP = "Type `end` to reset the session, `exit` to quit (Ctrl-C stops an answer)."


class ChatSession:
    """One terminal conversation over a TurboMind model."""

    def __init__(self, tm, session_id: int = 1, cap: str = "chat", **sampling):
        self.tm = tm
        self.inst = tm.create_instance()
        self.session_id = int(session_id)
        self.template = tm.model
        if cap == "completion":
            self.template.capability = "completion"
        self.sampling = sampling
        self.stop_ids = tm.tokenizer.stop_words_to_ids(getattr(self.template, "stop_words", []))
        self.step = 0  # tokens in the session's history

    def reset(self) -> None:
        self.inst.end(self.session_id)
        self.step = 0

    def room(self) -> int:
        return self.tm.session_len - self.step

    def ask(self, prompt: str, max_new_tokens: int, out=sys.stdout) -> Optional[str]:
        """Stream one answer to `out`; returns the finish reason, or None when the prompt does not fit."""
        start = self.step == 0
        text = self.template.get_prompt(prompt, sequence_start=start)
        ids = self.tm.tokenizer.encode(text, add_bos=start)
        if self.step + len(ids) >= self.tm.session_len:
            out.write(f"WARNING: this round ({len(ids)} tokens) does not fit in what is left of the session "
                      f"({self.room()} of {self.tm.session_len} tokens). Type `end` to reset the session.\n")
            return None
        budget = min(max_new_tokens, self.tm.session_len - self.step - len(ids))
        detok = self.tm.tokenizer.detokenizer()
        seen, finish = 0, None
        try:
            for outs in self.inst.stream_infer(self.session_id, ids, request_output_len=budget,
                                               sequence_start=start, sequence_end=False, step=self.step,
                                               stop_words=self.stop_ids, **self.sampling):
                token_ids = outs[0][0]
                out.write(detok.step(token_ids[seen:]))
                out.flush()
                seen = len(token_ids)
                finish = outs[0].finish_reason
                if finish == "error":
                    out.write(f"\n[error: {outs[0].error}]\n")
        except KeyboardInterrupt:
            self.inst.cancel(self.session_id)
            finish = "cancelled"
        out.write(detok.flush() + "\n")
        if finish == "error":
            return finish
        self.step += len(ids) + seen
        if self.room() < max(64, self.tm.session_len // 8):
            out.write(f"WARNING: the session is near its length limit ({self.step} of {self.tm.session_len} "
                      "tokens used). Type `end` to reset it.\n")
        return finish


def _read_prompt() -> Optional[str]:
    try:
        return input("\nuser >>> ")
    except EOFError:
        return None


def main(model_path: str, model_name: Optional[str] = None, tp: int = 1, session_id: int = 1,
         max_new_tokens: int = 512, temperature: float = 0.8, top_p: float = 0.95, top_k: int = 40,
         repetition_penalty: float = 1.0, seed: Optional[int] = None, cap: str = "chat",
         act_type: Optional[str] = None):
    from turbolm import turbomind

    if cap not in ("chat", "completion"):
        raise UserError(f"--cap must be chat or completion, got {cap!r}")
    tm = turbomind.TurboMind.from_pretrained(str(model_path), model_name=model_name, tp=int(tp), act_type=act_type)
    chat = ChatSession(tm, session_id=session_id, cap=cap, temperature=float(temperature), top_p=float(top_p),
                       top_k=int(top_k), repetition_penalty=float(repetition_penalty), random_seed=seed)
    print(f"turbolm chat: {model_path} (template {type(tm.model).__name__}, session length {tm.session_len}). "
          f"{HELP}")
    while True:
        prompt = _read_prompt()
        if prompt is None or prompt.strip() == "exit":
            break
        if prompt.strip() == "end":
            chat.reset()
            print("(session reset)")
            continue
        if not prompt.strip():
            continue
        sys.stdout.write("assistant: ")
        chat.ask(prompt, int(max_new_tokens))
    chat.reset()
