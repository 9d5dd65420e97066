"""Generated tokens → text, incrementally: stop strings, and stream pieces that add up to the final text.

The final text is `tokenizer.decode(tokens, skip_special_tokens=True)` cut before the first stop
string (what `steerlab.generate` returns, stops aside). Streamed pieces are emitted only while they
stay a prefix of that: a trailing incomplete UTF-8 character, trailing whitespace and the start of a
possible stop string are held back until the next token settles them.
"""

from __future__ import annotations


class TextTracker:
    def __init__(self, tokenizer, stop: list[str] | None = None):
        self.tok = tokenizer
        self.stop = [s for s in (stop or []) if s]
        self.tokens: list[int] = []
        self.sent = ""  # text already handed out as stream pieces
        self.text = ""  # the text of all tokens so far (cut at a stop string once one is seen)
        self.stopped = False

    def add(self, token: int | None) -> str:
        """Append a token (None: just re-read) and return the new piece that is safe to stream."""
        if token is not None:
            self.tokens.append(token)
        text = self.tok.decode(self.tokens, skip_special_tokens=True)
        for s in self.stop:
            i = text.find(s)
            if i >= 0:
                text = text[:i]
                self.stopped = True
        self.text = text
        if self.stopped:
            return ""
        safe = text.rstrip("\ufffd")
        safe = safe[:len(safe.rstrip())] if safe.strip() else ""
        for s in self.stop:  # hold back a suffix that might grow into a stop string
            for k in range(min(len(s) - 1, len(safe)), 0, -1):
                if safe.endswith(s[:k]):
                    safe = safe[:-k]
                    break
        if len(safe) > len(self.sent) and safe.startswith(self.sent):
            piece, self.sent = safe[len(self.sent):], safe
            return piece
        return ""

    def finish(self) -> str:
        """The rest of the final text (everything not yet streamed)."""
        if self.text.startswith(self.sent):
            piece, self.sent = self.text[len(self.sent):], self.text
            return piece
        return ""  # cannot happen with byte-level BPE decoders; the non-stream text is still exact
