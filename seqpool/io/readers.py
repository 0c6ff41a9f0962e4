"""One reader per input format, shared by ``seqpool embed`` and ``seqpool evaluate``.

Every reader streams: nothing holds more than one record (parquet: one record batch), so a
corpus may be far larger than memory. Every input is read exactly once per pass, and a
*stream* (``-`` for stdin, a pipe such as ``<(cat f)`` or ``/dev/stdin``, a FIFO, a character
device) can only be read once at all: :meth:`TextSource.count` refuses it instead of
consuming it, so callers never read a pipe twice and get 0 rows.

Formats and their dialects:

* ``txt``: one text per line; ``\\n`` or ``\\r\\n`` ends a line, every other character
  (``\\r``, ``\\x0b``, ``\\u2028``, tabs) is text. A UTF-8 BOM is dropped.
* ``jsonl`` (``.jsonl``, ``.ndjson``): one JSON object per line; blank lines hold no record.
* ``json``: a JSON array of objects (or, as the ``datasets`` library accepts, JSON lines).
* ``csv``: RFC 4180, read strictly: an unbalanced quote, text after a closing quote, or a
  record whose field count differs from the header's is an error naming its line.
* ``tsv``: tab-separated, quotes are literal text (``"Great" movie`` keeps its quotes), as
  ``cut`` and pandas' ``quoting=3`` read it. One exception keeps what csv writers (Python's
  ``csv``, pandas ``to_csv(sep="\\t")``, Excel) produce readable: a field that *starts* with a
  quote and is a well-formed quoted field (closing quote right before a tab or the line end,
  inner quotes doubled) is unquoted, and may then span lines. A quoted field that never
  closes properly, or spans lines and holds a tab, is an error naming its line: quotes never
  swallow records silently. A text holding a tab cannot be written as plain TSV.
* ``parquet``: a string column (also ``large_string`` and dictionary-encoded strings, e.g.
  pandas categoricals), read by record batch.

A ``null`` text reads as the empty string, so rows never shift.
"""

from __future__ import annotations

import csv
import json
import os
import re
import stat
import sys
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, NamedTuple, Sequence

from seqpool.errors import SeqpoolError

INPUT_FORMATS: tuple[str, ...] = ("txt", "jsonl", "json", "csv", "tsv", "parquet")
#: Texts read, encoded and checkpointed together: big enough to sort by length well,
#: small enough that an interruption loses seconds, not hours.
DEFAULT_CHUNK_SIZE = 8192
STDIN = "-"

_INPUT_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
                     ".parquet": "parquet", ".pq": "parquet"}
_FIELD_FORMATS = ("jsonl", "json", "csv", "tsv", "parquet")


class FieldError(SeqpoolError):
    """A record lacks a field, or its text is not a string. Besides the message it keeps the
    parts (``where``: file and line, ``field``, ``role``: "text" or "label", and the record's
    ``fields`` or the ``found`` type name), so a caller can say it in its own terms without
    parsing the message."""

    def __init__(self, message: str, where: str, field: str, role: str, *,
                 fields: Sequence[str] = (), found: str | None = None) -> None:
        super().__init__(message)
        self.where, self.field, self.role, self.fields, self.found = where, field, role, tuple(fields), found


class Record(NamedTuple):
    """One row of a corpus: its 1-based line (row, for parquet) in the file, text and label.

    A named tuple: created once per row of corpora with millions, so it must be cheap.
    """

    line: int
    text: str
    label: Any | None = None


def detect_input_format(path: str | os.PathLike) -> str:
    """The input format implied by the file name (``txt`` for anything unrecognised)."""
    return _INPUT_EXTENSIONS.get(Path(path).suffix.lower(), "txt")


def choose(value: str, valid: Sequence[str], what: str) -> str:
    """``value`` if it is one of ``valid``, else a SeqpoolError listing the choices."""
    if value not in valid:
        raise SeqpoolError(f"unknown {what} {value!r}; choose one of: {', '.join(valid)}")
    return value


def is_stream(path: str | os.PathLike) -> bool:
    """True for stdin and anything that cannot be read twice: pipes, FIFOs, sockets, devices."""
    if str(path) == STDIN:
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


@dataclass(frozen=True)
class TextSource:
    """A corpus to stream: a file (or ``-`` for stdin) in one of :data:`INPUT_FORMATS`.

    Rows are numbered from 0; a row's text is a line (txt), the ``text_field`` of a JSON
    object (jsonl/json) or of a record (csv/tsv/parquet); its label (``label_field``, when
    given) comes from the same record.
    """

    path: str
    format: str
    text_field: str = "text"
    label_field: str | None = None

    @classmethod
    def open(cls, path: str | os.PathLike, input_format: str | None = None, text_field: str | None = None,
             label_field: str | None = None) -> "TextSource":
        """Check the path, format and fields up front, so mistakes fail before any model loads.

        ``text_field`` defaults to ``"text"``; it (and ``label_field``) only exist in
        structured formats, so naming one for a txt input is an error, never ignored.
        """
        path = str(path)
        if path != STDIN and not os.path.exists(path):  # the plainest fact first: a mistyped name
            raise SeqpoolError(f"input file not found: {path}")
        fmt = choose(input_format or ("txt" if path == STDIN else detect_input_format(path)),
                     INPUT_FORMATS, "input format")
        if fmt == "txt":
            for name, value in (("text_field", text_field), ("label_field", label_field)):
                if value is not None:
                    raise SeqpoolError(f"{name}={value!r} needs a structured input ({', '.join(_FIELD_FORMATS)}); "
                                       f"{'stdin' if path == STDIN else path} is read as txt, one text per line "
                                       f"(set `input_format` if it is not)")
        if path == STDIN:
            if fmt == "parquet":
                raise SeqpoolError("parquet cannot be read from stdin (it needs seeking); pass the file path")
        elif os.path.isdir(path):
            raise SeqpoolError(f"input {path} is a directory; pass a file with one text per line")
        elif fmt == "parquet" and is_stream(path):
            raise SeqpoolError(f"parquet cannot be read from the stream {path} (it needs seeking); "
                               f"pass a regular file")
        source = cls(path, fmt, "text" if text_field is None else text_field, label_field)
        if fmt == "parquet":
            source._parquet_columns()  # fails now on a missing or non-text column
        return source

    @property
    def is_stdin(self) -> bool:
        return self.path == STDIN

    @property
    def is_stream(self) -> bool:
        """True when the input can be read only once (stdin, a pipe, a FIFO, a device)."""
        return is_stream(self.path)

    @property
    def name(self) -> str:
        return "stdin" if self.is_stdin else self.path

    def records(self) -> Iterator[Record]:
        """Every row as a :class:`Record`, in order, streamed."""
        if self.format == "parquet":
            return self._parquet_records()
        return self._stream_records()

    def texts(self) -> Iterator[str]:
        """Every row's text, in order, streamed."""
        return (record.text for record in self.records())

    def chunks(self, chunk_size: int = DEFAULT_CHUNK_SIZE, skip: int = 0) -> Iterator[list[str]]:
        """Lists of at most ``chunk_size`` texts, starting at row ``skip``."""
        return chunked(islice(self.texts(), skip, None), chunk_size)

    def count(self) -> int:
        """Number of rows; reads (and so validates) the whole input once, without keeping it.

        A stream cannot be read twice, so counting it is refused rather than consuming it.
        """
        if self.is_stream:
            raise SeqpoolError(f"{self.name} is a stream (a pipe or device) and can be read only once; "
                               f"it cannot be counted before it is read")
        if self.format == "parquet":
            return self._parquet_file().metadata.num_rows
        return sum(1 for _ in self.records())

    # txt / jsonl / json / csv / tsv: one streamed pass over the bytes

    def _stream_records(self) -> Iterator[Record]:
        if self.is_stdin:
            yield from self._parse(sys.stdin.buffer)
            return
        with open(self.path, "rb") as stream:
            yield from self._parse(stream)

    def _parse(self, stream: IO[bytes]) -> Iterator[Record]:
        lines = _decoded_lines(stream, self.name)
        if self.format == "txt":
            return (Record(number, strip_newline(line)) for number, line in lines)
        if self.format == "jsonl":  # blank lines hold no record (as for pandas and pyarrow)
            return (self._json_record(number, line) for number, line in lines if line.strip())
        if self.format == "json":
            return self._json_array_records(lines)
        if self.format == "tsv":
            return self._table_records(_tsv_rows(lines, self.name))
        return self._table_records(_csv_rows(lines, self.name))

    def _where(self, line: int) -> str:
        return f"{self.name}, line {line}"

    def _json_record(self, number: int, line: str) -> Record:
        where = self._where(number)
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise SeqpoolError(f"{where}: not valid JSON: {error.msg}") from None
        except RecursionError:
            raise SeqpoolError(f"{where}: JSON nested too deeply to read") from None
        return self._from_object(record, number, escapes="\\u" in line)

    def _from_object(self, record: Any, number: int, escapes: bool = True) -> Record:
        if not isinstance(record, dict):
            raise SeqpoolError(f"{self._where(number)}: expected a JSON object with a {self.text_field!r} field")
        if self.text_field not in record:
            raise SeqpoolError(f"{self._where(number)}: no field {self.text_field!r} (fields: {', '.join(map(str, record))}); "
                               f"choose one with `text_field`")
        label = None
        if self.label_field is not None:
            if self.label_field not in record:
                fields = [str(key) for key in record]
                raise FieldError(f"{self._where(number)}: no label field {self.label_field!r} (fields: "
                                 f"{', '.join(fields)})", self._where(number), self.label_field, "label",
                                 fields=fields)
            label = record[self.label_field]
        text = record[self.text_field]
        if escapes or not isinstance(text, str):  # only a \u escape can make a lone surrogate
            text = as_text(text, self._where(number), self.text_field)
        return Record(number, text, label)

    def _json_array_records(self, lines: Iterator[tuple[int, str]]) -> Iterator[Record]:
        """A JSON array of objects, each numbered by the line it starts on; JSON lines also work.

        A JSON array cannot be parsed in pieces, so this one format holds its text in memory.
        """
        text = "".join(line for _, line in lines)
        start = len(text) - len(text.lstrip())
        if not text[start:start + 1] == "[":
            for number, line in enumerate(text.split("\n"), start=1):  # "\n" only: U+2028 is text
                if line.strip():
                    yield self._json_record(number, line)
            return
        decoder = json.JSONDecoder()
        position, line_number = start + 1, 1 + text.count("\n", 0, start)
        expect_value = True
        while True:
            skipped = _skip_space(text, position)
            line_number += text.count("\n", position, skipped)
            position = skipped
            if position >= len(text):
                raise SeqpoolError(f"{self._where(line_number)}: the JSON array never closes with ']'")
            if text[position] == "]" and (expect_value is False or text[start + 1:position].strip() == ""):
                if text[position + 1:].strip():
                    raise SeqpoolError(f"{self._where(line_number)}: text after the end of the JSON array")
                return
            if not expect_value:
                if text[position] != ",":
                    raise SeqpoolError(f"{self._where(line_number)}: not valid JSON: expected ',' or ']'")
                position += 1
                expect_value = True
                continue
            try:
                value, end = decoder.raw_decode(text, position)
            except json.JSONDecodeError as error:
                raise SeqpoolError(f"{self._where(error.lineno)}: not valid JSON: {error.msg}") from None
            except RecursionError:
                raise SeqpoolError(f"{self._where(line_number)}: JSON nested too deeply to read") from None
            yield self._from_object(value, line_number)
            line_number += text.count("\n", position, end)
            position, expect_value = end, False

    def _table_records(self, rows: Iterator[tuple[int, list[str]]]) -> Iterator[Record]:
        header_row = next(rows, None)
        if header_row is None:
            return
        _, header = header_row
        column = self._column(header, self.text_field, "")
        label_column = None if self.label_field is None else self._column(header, self.label_field, "label ")
        for number, fields in rows:
            if len(fields) != len(header):
                raise SeqpoolError(f"{self._where(number)}: {len(fields)} fields, but the header has "
                                   f"{len(header)}; every record needs one field per column")
            label = None if label_column is None else fields[label_column]
            yield Record(number, fields[column], label)

    def _column(self, header: list[str], field: str, what: str) -> int:
        if field not in header:
            hint = "" if what else "; choose one with `text_field`"
            raise SeqpoolError(f"{self.name}: no {what}column {field!r} in the header ({', '.join(header)}){hint}")
        return header.index(field)

    # parquet: record batches, never the whole table

    def _parquet_file(self) -> Any:
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(self.path)
        except Exception as error:  # pyarrow raises its own ArrowInvalid for non-parquet files
            raise SeqpoolError(f"{self.path} is not a readable parquet file: {error}") from None

    def _parquet_columns(self) -> list[str]:
        import pyarrow as pa

        schema = self._parquet_file().schema_arrow
        columns = [self.text_field] + ([self.label_field] if self.label_field is not None else [])
        for column, what in zip(columns, ("", "label ")):
            if column not in schema.names:
                hint = "" if what else "; choose one with `text_field`"
                raise SeqpoolError(f"{self.path}: no {what}column {column!r} ({', '.join(schema.names)}){hint}")
        field_type = schema.field(self.text_field).type
        if pa.types.is_dictionary(field_type):  # pandas categoricals: dictionary-encoded strings
            field_type = field_type.value_type
        if not (pa.types.is_string(field_type) or pa.types.is_large_string(field_type)
                or getattr(pa.types, "is_string_view", lambda _: False)(field_type)):
            raise SeqpoolError(f"{self.path}: column {self.text_field!r} holds {field_type}, not text")
        return list(dict.fromkeys(columns))

    def _parquet_records(self) -> Iterator[Record]:
        columns = self._parquet_columns()
        row = 0
        for batch in self._parquet_file().iter_batches(batch_size=DEFAULT_CHUNK_SIZE, columns=columns):
            texts = batch.column(columns.index(self.text_field)).to_pylist()
            labels = (batch.column(columns.index(self.label_field)).to_pylist() if self.label_field is not None
                      else [None] * len(texts))
            for text, label in zip(texts, labels):
                row += 1
                yield Record(row, "" if text is None else text, label)


def _decoded_lines(stream: IO[bytes], name: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, text with its line ending) pairs; invalid UTF-8 names the line."""
    for number, raw in enumerate(stream, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise SeqpoolError(f"{name}, line {number}: not valid UTF-8 (byte 0x{raw[error.start]:02x} at "
                               f"byte {error.start + 1} of the line); convert the file to UTF-8 first") from None
        yield number, (line[1:] if number == 1 and line.startswith("\ufeff") else line)


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def strip_newline(line: str) -> str:
    """The line without its ``\\n`` or ``\\r\\n`` ending (other characters are text)."""
    if line.endswith("\n"):
        line = line[:-1]
        if line.endswith("\r"):
            line = line[:-1]
    return line


def as_text(value: Any, where: str, field: str) -> str:
    """A record's text: ``None`` reads as empty; anything but a valid Unicode string is an error."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise FieldError(f"{where}: field {field!r} is {type(value).__name__}, not a string", where, field, "text",
                         found=type(value).__name__)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:  # JSON allows "\ud800", a lone surrogate no tokenizer can take
        raise SeqpoolError(f"{where}: field {field!r} holds an invalid Unicode escape (lone surrogate "
                           f"\\u{ord(value[error.start]):04x})") from None
    return value


def _csv_rows(lines: Iterator[tuple[int, str]], name: str) -> Iterator[tuple[int, list[str]]]:
    """RFC 4180 records, each with the line it starts on; malformed quoting is an error."""
    # Long documents exceed csv's default 128 KiB field limit; a text embedder must accept them.
    csv.field_size_limit(2**31 - 1)
    reader = csv.reader((line for _, line in lines), strict=True)
    while True:
        start = reader.line_num + 1
        try:
            record = next(reader, None)
        except csv.Error as error:
            detail = ("a quoted field opened here never closes" if "end of data" in str(error)
                      else f"malformed CSV: {error}")
            raise SeqpoolError(f"{name}, line {start}: {detail} (at line {reader.line_num}); "
                               f"quote fields as RFC 4180 says, doubling inner quotes") from None
        if record is None:
            return
        if record:  # a blank line holds no record (csv writers quote an empty text: "")
            yield start, record


def _tsv_rows(lines: Iterator[tuple[int, str]], name: str) -> Iterator[tuple[int, list[str]]]:
    """Tab-separated records with literal quotes (see the module docstring for the one exception)."""
    header_width = None
    for number, raw in lines:
        line = strip_newline(raw)
        if not line.startswith('"') and '\t"' not in line:  # no field starts with a quote: plain split
            fields = line.split("\t")
            if header_width is None:
                header_width = len(fields)
            elif fields == [""] and header_width > 1:
                continue
            yield number, fields
            continue
        fields = []
        start, position = number, 0
        ending = raw[len(line):]  # "\n" or "\r\n": inside a quoted field it is text, kept as written
        while True:
            if line.startswith('"', position):
                parsed = _quoted_field(line, position)
                if parsed is None:  # closes on a later line, or never
                    value, line, ending, position, number = _multiline_field(line, ending, position, lines, name,
                                                                             start)
                    fields.append(value)
                elif parsed[1] is not None:
                    fields.append(parsed[0])
                    position = parsed[1]
                else:  # `"Great" movie`: not a quoted field, the quotes are text
                    end = line.find("\t", position)
                    fields.append(line[position:] if end < 0 else line[position:end])
                    position = len(line) if end < 0 else end
            else:
                end = line.find("\t", position)
                fields.append(line[position:] if end < 0 else line[position:end])
                position = len(line) if end < 0 else end
            if position >= len(line):
                break
            position += 1  # past the tab
            if position == len(line):
                fields.append("")
                break
        if header_width is None:
            header_width = len(fields)
        elif fields == [""] and header_width > 1:
            continue  # a blank line cannot be a record of several columns
        yield start, fields


_QUOTED_BODY = re.compile(r'"((?:[^"]+|"")*)')


def _quoted_field(line: str, position: int) -> tuple[str, int | None] | None:
    """Parse the quoted field opening at ``position``.

    Returns (value, end) when it closes right before a tab or the line end, (text, None)
    when a closing quote is followed by other text (so it is no quoted field), and None
    when the line ends inside the quotes.
    """
    match = _QUOTED_BODY.match(line, position)
    end = match.end()
    if end == len(line):
        return None
    if end + 1 == len(line) or line[end + 1] == "\t":
        return match.group(1).replace('""', '"'), end + 1
    return "", None


def _multiline_field(line: str, ending: str, position: int, lines: Iterator[tuple[int, str]], name: str,
                     start: int) -> tuple[str, str, str, int, int]:
    """A quoted field continued over later lines, each line break kept as written (``ending``:
    the break after ``line``): (value, last line, its break, position after the field, its number)."""
    text = line[position:]
    number = start
    for number, raw in lines:
        piece = strip_newline(raw)
        text += ending + piece
        ending = raw[len(piece):]
        if '"' not in piece:
            if "\t" in piece:
                break
            continue
        parsed = _quoted_field(text, 0)
        if parsed is None:
            if "\t" in piece:
                break
            continue
        value, end = parsed
        consumed = end - (len(text) - len(piece))
        if end is None or "\t" in value:
            break
        return value, piece, ending, consumed, number
    raise SeqpoolError(f"{name}, line {start}: a field starts with a quote that does not close as a quoted "
                       f"TSV field (checked to line {number}); TSV quotes are literal unless a whole field is "
                       f"quoted as csv writers write it")


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of ``size`` items (the last may be shorter); never an empty list."""
    if size < 1:
        raise SeqpoolError(f"chunk size must be at least 1, got {size}")
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def calibration_source(calibration: str | os.PathLike) -> TextSource:
    """The calibration texts, or one line saying that it is the calibration file that is wrong."""
    if not os.path.exists(calibration):
        raise SeqpoolError(f"calibration file not found: {calibration}; `calibration` names the texts the "
                           f"int8/uint8 ranges are fitted on")
    if os.path.isdir(calibration):
        raise SeqpoolError(f"calibration file {calibration} is a directory; pass a file of texts as `calibration`")
    try:
        return TextSource.open(calibration)
    except SeqpoolError as error:
        raise SeqpoolError(f"calibration file {calibration}: {error}") from None
