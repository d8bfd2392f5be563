/*
 * streamer.decode._scan: a tokenizer for clean space-separated flow-log chunks.
 *
 * scan(parts, kinds, header) reads a chunk given as one buffer or a tuple of
 * buffers (each ending at a line end but maybe the last: the chunk's parts,
 * never joined), whose fields are described by `kinds`, one byte per field in
 * order: 0 skip, 1 integer, 2 string, 3 dictionary-encoded string, 4 integer
 * that must fit in an int32. Only wanted fields are converted; the rest are
 * stepped over. "-" is null. Lines equal to `header` (a repeated header line)
 * are skipped. The GIL is released while
 * scanning, so decode threads run in parallel.
 *
 * It returns None as soon as the chunk is not clean: a line with another
 * field count, an empty field, an integer that is not 1-18 ASCII digits, a
 * byte that is not ASCII, a part that does not end a line. Such chunks go to
 * the Arrow path (decode/text.py), which counts and repairs bad lines; the two
 * agree record for record on every chunk this accepts
 * (tests/unit/decode/test_native.py). Blank lines and "\r\n" endings are
 * accepted, as Arrow's CSV reader accepts them.
 *
 * Otherwise it returns (rows, columns) with one tuple per wanted field:
 *   integer:    (null_count, validity, int64 values; int32 for kind 4, whose larger values make the
 *               chunk not clean)
 *   string:     (null_count, validity, int32 offsets, data)
 *   dictionary: (null_count, validity, int32 indices, int32 dict offsets, dict data)
 * where validity is an Arrow bitmap (bytes) or None when nothing is null, so
 * that pyarrow.Array.from_buffers wraps the buffers without copying them.
 *
 * hash_strings(offsets, data, offset, length) hashes every value of an Arrow string array to a uint64
 * for the NACL pairing, nacl_candidates(...) selects and keys one batch's pairing candidates, and
 * insight_counts(...) counts the other three insights of a batch, sort_requests(...) orders a batch's
 * requests and merge_keys(...) merges them into the pairing's set of a window (see each function). VERSION says which of these a build has.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

enum { SKIP = 0, INTEGER = 1, STRING = 2, DICTIONARY = 3, INT32 = 4 };

typedef struct {
    const char *ptr;
    int32_t len;
    uint64_t hash;
} Entry;

typedef struct { /* a string -> index table for one dictionary column, entries in first-seen order */
    Entry *entries;
    int32_t count, capacity;
    int32_t *slots; /* index + 1, 0 = empty */
    uint64_t mask;
    int64_t bytes;
} Dict;

typedef struct {
    int kind;
    PyObject *validity; /* bytes, filled before the scan; NULL until allocated */
    PyObject *values;   /* int64 values, int32 offsets or int32 indices */
    PyObject *data;     /* string bytes (STRING) */
    Py_ssize_t nulls;
    Py_ssize_t data_len;
    Dict dict;
} Column;

static uint64_t hash_bytes(const char *p, int32_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (uint64_t)n; /* eight bytes per step */
    while (n > 0) {
        uint64_t w = 0;
        memcpy(&w, p, n >= 8 ? 8 : (size_t)n);
        h = (h ^ w) * 0xBF58476D1CE4E5B9ULL;
        h ^= h >> 31;
        p += 8;
        n -= 8;
    }
    return h;
}

static int dict_init(Dict *d) {
    d->capacity = 256;
    d->count = 0;
    d->bytes = 0;
    d->entries = malloc(sizeof(Entry) * (size_t)d->capacity);
    d->mask = 1023;
    d->slots = calloc(d->mask + 1, sizeof(int32_t));
    return d->entries != NULL && d->slots != NULL;
}

static void dict_free(Dict *d) {
    free(d->entries);
    free(d->slots);
    d->entries = NULL;
    d->slots = NULL;
}

static int dict_grow(Dict *d) {
    uint64_t mask = d->mask * 2 + 1;
    int32_t *slots = calloc(mask + 1, sizeof(int32_t));
    if (slots == NULL) return 0;
    for (int32_t i = 0; i < d->count; i++) {
        uint64_t s = d->entries[i].hash & mask;
        while (slots[s]) s = (s + 1) & mask;
        slots[s] = i + 1;
    }
    free(d->slots);
    d->slots = slots;
    d->mask = mask;
    return 1;
}

/* index of the string in the dictionary, adding it when new; -1 when out of memory */
static int32_t dict_index(Dict *d, const char *p, int32_t n) {
    uint64_t h = hash_bytes(p, n);
    uint64_t s = h & d->mask;
    while (d->slots[s]) {
        Entry *e = &d->entries[d->slots[s] - 1];
        if (e->hash == h && e->len == n && memcmp(e->ptr, p, (size_t)n) == 0) return d->slots[s] - 1;
        s = (s + 1) & d->mask;
    }
    if (d->count == d->capacity) {
        int32_t capacity = d->capacity * 2;
        Entry *entries = realloc(d->entries, sizeof(Entry) * (size_t)capacity);
        if (entries == NULL) return -1;
        d->entries = entries;
        d->capacity = capacity;
    }
    int32_t index = d->count++;
    d->entries[index] = (Entry){p, n, h};
    d->slots[s] = index + 1;
    d->bytes += n;
    if ((uint64_t)d->count * 2 > d->mask && !dict_grow(d)) return -1;
    return index;
}

static inline void clear_bit(uint8_t *bits, Py_ssize_t i) { bits[i >> 3] &= (uint8_t) ~(1u << (i & 7)); }

/* Bit i set where block[i] is a space or a newline (64 bytes from `block`); *high gets any non-ASCII or NUL
 * byte (Arrow's path drops and counts those lines: no store can hold a NUL in text). */
static inline uint64_t delimiters64(const char *block, uint64_t *high) {
#ifdef __SSE2__
    const __m128i space = _mm_set1_epi8(' '), newline = _mm_set1_epi8('\n'), zero = _mm_setzero_si128();
    uint64_t mask = 0;
    for (int i = 0; i < 4; i++) {
        __m128i v = _mm_loadu_si128((const __m128i *)(block + 16 * i));
        __m128i hit = _mm_or_si128(_mm_cmpeq_epi8(v, space), _mm_cmpeq_epi8(v, newline));
        mask |= (uint64_t)(uint32_t)_mm_movemask_epi8(hit) << (16 * i);
        *high |= (uint32_t)_mm_movemask_epi8(_mm_or_si128(v, _mm_cmpeq_epi8(v, zero)));
    }
    return mask;
#else
    uint64_t mask = 0;
    for (int i = 0; i < 64; i++) {
        mask |= (uint64_t)(block[i] == ' ' || block[i] == '\n') << i;
        *high |= ((unsigned char)block[i] >> 7) | (block[i] == 0);
    }
    return mask;
#endif
}

typedef struct {
    const uint8_t *kinds;
    Py_ssize_t nfields, field, row;
    Column *cols, *col;
    const char *header;
    Py_ssize_t header_len;
    int skipping; /* inside a header line */
} Cursor;

/* One field [t, t + n), ended by a space or (at_eol) a line end. 1 ok, 0 not clean, -1 out of memory. */
static inline int token(Cursor *c, const char *t, int32_t n, int at_eol, const char *part_end) {
    if (c->skipping) {
        c->skipping = !at_eol;
        return 1;
    }
    if (c->field == 0 && c->header_len && t[0] == c->header[0] && part_end - t > c->header_len &&
        memcmp(t, c->header, (size_t)c->header_len) == 0 &&
        (t[c->header_len] == '\n' || (t[c->header_len] == '\r' && part_end - t > c->header_len + 1 && t[c->header_len + 1] == '\n'))) {
        c->skipping = !at_eol; /* a repeated header line (ended by a newline): not a record */
        return 1;
    }
    if (at_eol && n > 0 && t[n - 1] == '\r') n--;
    if (at_eol && c->field == 0 && n == 0) return 1; /* blank line */
    if (c->field >= c->nfields || n == 0) return 0;
    int kind = c->kinds[c->field++];
    if (kind != SKIP) {
        Column *col = c->col++;
        Py_ssize_t row = c->row;
        int is_null = (n == 1 && t[0] == '-');
        if (is_null) {
            clear_bit((uint8_t *)PyBytes_AS_STRING(col->validity), row);
            col->nulls++;
        }
        if (kind == INTEGER || kind == INT32) {
            int64_t v = 0;
            if (!is_null) {
                if (n > 18) return 0;
                for (int32_t i = 0; i < n; i++) {
                    unsigned d = (unsigned)(t[i] - '0');
                    if (d > 9) return 0;
                    v = v * 10 + d;
                }
            }
            if (kind == INTEGER) {
                ((int64_t *)PyBytes_AS_STRING(col->values))[row] = v;
            } else {
                if (v > INT32_MAX) return 0; /* out of the field's range: Arrow's path says so */
                ((int32_t *)PyBytes_AS_STRING(col->values))[row] = (int32_t)v;
            }
        } else if (kind == STRING) {
            if (!is_null) {
                char *to = PyBytes_AS_STRING(col->data) + col->data_len;
#ifdef __SSE2__
                if (n <= 16 && part_end - t >= 16) /* an address: one 16-byte move (the buffer has 16 spare) */
                    _mm_storeu_si128((__m128i *)to, _mm_loadu_si128((const __m128i *)t));
                else
#endif
                    memcpy(to, t, (size_t)n);
                col->data_len += n;
            }
            ((int32_t *)PyBytes_AS_STRING(col->values))[row + 1] = (int32_t)col->data_len;
        } else {
            int32_t index = 0;
            if (!is_null && (index = dict_index(&col->dict, t, n)) < 0) return -1;
            ((int32_t *)PyBytes_AS_STRING(col->values))[row] = index;
        }
    }
    if (at_eol) {
        if (c->field != c->nfields) return 0;
        c->row++;
        c->field = 0;
        c->col = c->cols;
    }
    return 1;
}

/* One part of the chunk into the cursor: 1 clean so far, 0 not clean, -1 out of memory.
 * Delimiters are found 64 bytes at a time, so the work per line is per field, not per byte.
 * Every part but the last must end a line. */
static int scan_part(Cursor *c, const char *buf, Py_ssize_t len, int last) {
    Py_ssize_t start = 0, block = 0;
    uint64_t high = 0;
    int ok;
    const char *end = buf + len;
    for (; block + 64 <= len; block += 64) {
        uint64_t mask = delimiters64(buf + block, &high);
        while (mask) {
            Py_ssize_t at = block + __builtin_ctzll(mask);
            mask &= mask - 1;
            if ((ok = token(c, buf + start, (int32_t)(at - start), buf[at] == '\n', end)) != 1) return ok;
            start = at + 1;
        }
    }
    for (Py_ssize_t at = block; at < len; at++) {
        high |= ((unsigned char)buf[at] >> 7) | (buf[at] == 0);
        if (buf[at] == ' ' || buf[at] == '\n') {
            if ((ok = token(c, buf + start, (int32_t)(at - start), buf[at] == '\n', end)) != 1) return ok;
            start = at + 1;
        }
    }
    if (high) return 0; /* not ASCII, or a NUL: Arrow's path finds and counts those lines */
    if (start < len || c->field > 0 || c->skipping) {
        if (!last) return 0;
        if ((ok = token(c, buf + start, (int32_t)(len - start), 1, end)) != 1) return ok; /* a last line without its newline */
    }
    return 1;
}

static void free_columns(Column *cols, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_XDECREF(cols[i].validity);
        Py_XDECREF(cols[i].values);
        Py_XDECREF(cols[i].data);
        dict_free(&cols[i].dict);
    }
    free(cols);
}

static PyObject *column_result(Column *col, Py_ssize_t rows) {
    Py_ssize_t bitmap = (rows + 7) / 8;
    PyObject *validity = Py_None;
    Py_INCREF(Py_None);
    if (col->nulls) {
        Py_DECREF(Py_None);
        validity = PyBytes_FromStringAndSize(PyBytes_AS_STRING(col->validity), bitmap);
        if (validity == NULL) return NULL;
    }
    PyObject *out = NULL;
    if (col->kind == INTEGER || col->kind == INT32) {
        out = Py_BuildValue("(nNO)", col->nulls, validity, col->values);
    } else if (col->kind == STRING) {
        if (_PyBytes_Resize(&col->data, col->data_len) < 0) {
            Py_DECREF(validity);
            return NULL;
        }
        out = Py_BuildValue("(nNOO)", col->nulls, validity, col->values, col->data);
    } else {
        Dict *d = &col->dict;
        PyObject *offsets = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)sizeof(int32_t) * (d->count + 1));
        PyObject *data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)d->bytes);
        if (offsets == NULL || data == NULL) {
            Py_XDECREF(offsets);
            Py_XDECREF(data);
            Py_DECREF(validity);
            return NULL;
        }
        int32_t *o = (int32_t *)PyBytes_AS_STRING(offsets);
        char *dst = PyBytes_AS_STRING(data);
        int32_t at = 0;
        o[0] = 0;
        for (int32_t i = 0; i < d->count; i++) {
            memcpy(dst + at, d->entries[i].ptr, (size_t)d->entries[i].len);
            at += d->entries[i].len;
            o[i + 1] = at;
        }
        out = Py_BuildValue("(nNONN)", col->nulls, validity, col->values, offsets, data);
    }
    return out;
}

#define MAX_PARTS 64

static PyObject *scan(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *parts_obj;
    Py_buffer kinds, header;
    Py_buffer parts[MAX_PARTS];
    Py_ssize_t nparts = 0;
    if (!PyArg_ParseTuple(args, "Oy*y*", &parts_obj, &kinds, &header)) return NULL;
    PyObject *result = NULL;
    Column *cols = NULL;
    Py_ssize_t wanted = 0;
    const uint8_t *kind = kinds.buf;
    Py_ssize_t nfields = kinds.len;
    for (Py_ssize_t i = 0; i < nfields; i++) {
        if (kind[i] > INT32) {
            PyErr_Format(PyExc_ValueError, "unknown field kind %d", kind[i]);
            goto fail;
        }
        wanted += kind[i] != SKIP;
    }
    if (PyTuple_Check(parts_obj)) {
        if (PyTuple_GET_SIZE(parts_obj) > MAX_PARTS) {
            result = Py_None; /* not worth it: let the caller join them */
            Py_INCREF(result);
            goto done;
        }
        for (; nparts < PyTuple_GET_SIZE(parts_obj); nparts++) {
            if (PyObject_GetBuffer(PyTuple_GET_ITEM(parts_obj, nparts), &parts[nparts], PyBUF_SIMPLE) < 0) goto fail;
        }
    } else {
        if (PyObject_GetBuffer(parts_obj, &parts[0], PyBUF_SIMPLE) < 0) goto fail;
        nparts = 1;
    }
    /* upper bounds: rows (every line ends in a newline, the last one of a part may not) and string bytes */
    Py_ssize_t bound = 0, total = 0;
    for (Py_ssize_t i = 0; i < nparts; i++) {
        const char *buf = parts[i].buf;
        Py_ssize_t len = parts[i].len;
        bound++;
        total += len;
        for (const char *p = buf, *end = buf + len; (p = memchr(p, '\n', (size_t)(end - p))) != NULL; p++) bound++;
    }
    /* A clean line holds at least one byte and a separator per field: more lines than that leaves room
       for are not all clean. Arrow's path takes them, before buffers sized by the line count are made
       (a chunk of millions of tiny lines would otherwise cost tens of times its size here). */
    if ((bound - nparts) * 2 * nfields > total + 2 * nfields) {
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    cols = calloc((size_t)(wanted ? wanted : 1), sizeof(Column));
    if (cols == NULL) goto nomem;
    Py_ssize_t c = 0;
    for (Py_ssize_t i = 0; i < nfields; i++) {
        if (kind[i] == SKIP) continue;
        Column *col = &cols[c++];
        col->kind = kind[i];
        col->validity = PyBytes_FromStringAndSize(NULL, (bound + 7) / 8);
        if (col->validity == NULL) goto fail;
        memset(PyBytes_AS_STRING(col->validity), 0xFF, (size_t)(bound + 7) / 8);
        Py_ssize_t width = col->kind == INTEGER ? 8 : 4; /* INT32 values, offsets and indices: 4 */
        col->values = PyBytes_FromStringAndSize(NULL, width * (bound + (col->kind == STRING)));
        if (col->values == NULL) goto fail;
        if (col->kind == STRING) {
            ((int32_t *)PyBytes_AS_STRING(col->values))[0] = 0;
            col->data = PyBytes_FromStringAndSize(NULL, total + 16); /* 16 spare: see STRING in token */
            if (col->data == NULL) goto fail;
        } else if (col->kind == DICTIONARY && !dict_init(&col->dict)) {
            goto nomem;
        }
    }
    Cursor cursor = {kind, nfields, 0, 0, cols, cols, header.buf, header.len, 0};
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < nparts && ok == 1; i++) ok = scan_part(&cursor, parts[i].buf, parts[i].len, i == nparts - 1);
    Py_END_ALLOW_THREADS
    if (ok < 0) goto nomem;
    if (ok == 0) {
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    Py_ssize_t rows = cursor.row;
    PyObject *list = PyList_New(wanted);
    if (list == NULL) goto fail;
    for (Py_ssize_t i = 0; i < wanted; i++) {
        Column *col = &cols[i];
        Py_ssize_t width = col->kind == INTEGER ? 8 : 4; /* INT32 values, offsets and indices: 4 */
        if (_PyBytes_Resize(&col->values, width * (rows + (col->kind == STRING))) < 0) {
            Py_DECREF(list);
            goto fail;
        }
        PyObject *item = column_result(col, rows);
        if (item == NULL) {
            Py_DECREF(list);
            goto fail;
        }
        PyList_SET_ITEM(list, i, item);
    }
    result = Py_BuildValue("(nN)", rows, list);
    goto done;
nomem:
    PyErr_NoMemory();
fail:
    Py_CLEAR(result);
done:
    if (cols != NULL) free_columns(cols, wanted);
    for (Py_ssize_t i = 0; i < nparts; i++) PyBuffer_Release(&parts[i]);
    PyBuffer_Release(&kinds);
    PyBuffer_Release(&header);
    return result;
}

/*
 * hash_strings(offsets, data, offset, length) -> bytes: a uint64 per value of an Arrow string array
 * (int32 `offsets` and `data` buffers, `length` values from `offset`), the same hash as
 * streamer.aggregate.pairing._string_hash (its numpy reference): h = sum(byte_j * P^(len-1-j)) mod 2^64
 * (Horner), then splitmix64's finalizer of h ^ (len * 0x9E3779B97F4A7C15). The GIL is released.
 */
#define P1 1000003ULL
#define P2 (P1 * P1)
#define P3 (P2 * P1)
#define P4 (P3 * P1)
#define P5 (P4 * P1)
#define P6 (P5 * P1)
#define P7 (P6 * P1)
#define P8 (P7 * P1)

static inline uint64_t mix64(uint64_t h) {
    h ^= h >> 30;
    h *= 0xBF58476D1CE4E5B9ULL;
    h ^= h >> 27;
    h *= 0x94D049BB133111EBULL;
    return h ^ (h >> 31);
}

static inline uint64_t hash_value(const uint8_t *bytes, int32_t start, int32_t end) {
    uint64_t v = 0;
    int32_t j = start;
    for (; j + 8 <= end; j += 8) /* eight bytes a step: an eighth of the dependent multiplies */
        v = v * P8 + bytes[j] * P7 + bytes[j + 1] * P6 + bytes[j + 2] * P5 + bytes[j + 3] * P4 + bytes[j + 4] * P3 +
            bytes[j + 5] * P2 + bytes[j + 6] * P1 + bytes[j + 7];
    if (j + 4 <= end) {
        v = v * P4 + bytes[j] * P3 + bytes[j + 1] * P2 + bytes[j + 2] * P1 + bytes[j + 3];
        j += 4;
    }
    for (; j < end; j++) v = v * P1 + bytes[j];
    return mix64(v ^ ((uint64_t)(end - start) * 0x9E3779B97F4A7C15ULL));
}

static PyObject *hash_strings(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer offsets, data;
    Py_ssize_t offset, length;
    if (!PyArg_ParseTuple(args, "y*y*nn", &offsets, &data, &offset, &length)) return NULL;
    PyObject *out = NULL;
    if (offset < 0 || length < 0 || (offset + length + 1) * (Py_ssize_t)sizeof(int32_t) > offsets.len) {
        PyErr_SetString(PyExc_ValueError, "offsets buffer too short");
        goto done;
    }
    const int32_t *off = (const int32_t *)offsets.buf + offset;
    for (Py_ssize_t i = 0; i <= length; i += length ? length : 1) { /* offsets are monotonic: check the ends */
        if (off[i] < 0 || off[i] > data.len) {
            PyErr_SetString(PyExc_ValueError, "offset outside the data buffer");
            goto done;
        }
    }
    if (off[length] < off[0]) {
        PyErr_SetString(PyExc_ValueError, "offsets not monotonic");
        goto done;
    }
    out = PyBytes_FromStringAndSize(NULL, length * (Py_ssize_t)sizeof(uint64_t));
    if (out == NULL) goto done;
    uint64_t *h = (uint64_t *)PyBytes_AS_STRING(out);
    const uint8_t *bytes = data.buf;
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < length; i++) {
        int32_t start = off[i], end = off[i + 1];
        if (end < start || end > off[length]) {
            ok = 0;
            break;
        }
        h[i] = hash_value(bytes, start, end);
    }
    Py_END_ALLOW_THREADS
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "offsets not monotonic");
        Py_CLEAR(out);
    }
done:
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&data);
    return out;
}

/*
 * nacl_candidates(t, sport, dport, proto, present, action, action_kinds, eni, eni_hashes, src_offsets, src_data,
 *                 src_offset, dst_offsets, dst_data, dst_offset, window_seconds, max_time)
 *     -> (requests, replies, rows, windows, hashes)
 *
 * One batch's NACL pairing candidates in one pass (streamer.aggregate.pairing._select_reference is the
 * numpy reference; both give the same rows, windows and keys). Per row: `t` the record's time (int64, < 0
 * none), ports and protocol (int32 or int64 each, by buffer size), `present` a byte per row, 0 where a
 * needed field is null (empty: none is), `action` an int32 code whose kind `action_kinds[code]` is 1 ACCEPT,
 * 2 REJECT or 0, `eni` an int32 code whose string hash is `eni_hashes[code]`, and the two address columns as
 * Arrow string arrays. A request is an ACCEPT from an ephemeral port to a lower port, a reply a REJECT to an
 * ephemeral port from a lower one, TCP or UDP, with 0 <= t <= max_time. A request's key is the hash of its
 * reversed flow, a reply's of its own flow (pairing._key). Requests fill the outputs from the front in row
 * order, replies from the back (the last reply first). The GIL is released.
 */
#define K0 0x9E3779B97F4A7C15ULL
#define K1 0xC2B2AE3D27D4EB4FULL
#define K2 0x165667B19E3779F9ULL

static inline uint64_t flow_key(uint64_t eni, uint64_t a, uint64_t b, int64_t port_a, int64_t port_b, int64_t proto) {
    uint64_t packed = (((uint64_t)port_a << 16 | (uint64_t)port_b) << 8) | ((uint64_t)proto & 0xFF);
    return mix64(eni * K0 + a * K1 + b * K2 + mix64(packed));
}

static inline int64_t int_at(const Py_buffer *b, int wide, Py_ssize_t i) {
    return wide ? ((const int64_t *)b->buf)[i] : (int64_t)((const int32_t *)b->buf)[i];
}

/* An Arrow string array's offsets checked like hash_strings does: 0 ok, -1 with an error set. */
static int check_strings(const Py_buffer *offsets, const Py_buffer *data, Py_ssize_t offset, Py_ssize_t n) {
    if (offset < 0 || (offset + n + 1) * (Py_ssize_t)sizeof(int32_t) > offsets->len) {
        PyErr_SetString(PyExc_ValueError, "offsets buffer too short");
        return -1;
    }
    const int32_t *off = (const int32_t *)offsets->buf + offset;
    if (off[0] < 0 || off[n] > data->len || off[n] < off[0]) {
        PyErr_SetString(PyExc_ValueError, "offset outside the data buffer");
        return -1;
    }
    return 0;
}

static PyObject *nacl_candidates(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer t, sport, dport, proto, present, action, kinds, eni, eni_hashes, src_off, src_data, dst_off, dst_data;
    Py_ssize_t src_offset, dst_offset;
    long long window_seconds, max_time;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*y*y*y*y*ny*y*nLL", &t, &sport, &dport, &proto, &present, &action, &kinds,
                          &eni, &eni_hashes, &src_off, &src_data, &src_offset, &dst_off, &dst_data, &dst_offset,
                          &window_seconds, &max_time))
        return NULL;
    PyObject *result = NULL, *rows_out = NULL, *windows_out = NULL, *hashes_out = NULL;
    Py_ssize_t n = t.len / 8;
    int wide[3];
    const Py_buffer *ints[3] = {&sport, &dport, &proto};
    for (int k = 0; k < 3; k++) {
        if (ints[k]->len != 4 * n && ints[k]->len != 8 * n) {
            PyErr_SetString(PyExc_ValueError, "a port or protocol buffer of the wrong size");
            goto done;
        }
        wide[k] = ints[k]->len == 8 * n && n > 0;
    }
    if (t.len != 8 * n || action.len != 4 * n || eni.len != 4 * n || (present.len != 0 && present.len != n) ||
        window_seconds <= 0) {
        PyErr_SetString(PyExc_ValueError, "a time, presence, action or interface buffer of the wrong size, or no window");
        goto done;
    }
    if (check_strings(&src_off, &src_data, src_offset, n) < 0 || check_strings(&dst_off, &dst_data, dst_offset, n) < 0)
        goto done;
    rows_out = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(int32_t));
    windows_out = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(int64_t));
    hashes_out = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(uint64_t));
    if (rows_out == NULL || windows_out == NULL || hashes_out == NULL) goto done;
    int32_t *rows = (int32_t *)PyBytes_AS_STRING(rows_out);
    int64_t *windows = (int64_t *)PyBytes_AS_STRING(windows_out);
    uint64_t *hashes = (uint64_t *)PyBytes_AS_STRING(hashes_out);
    const int64_t *time = t.buf;
    const uint8_t *here = present.len ? present.buf : NULL, *kind = kinds.buf;
    const int32_t *act = action.buf, *eni_code = eni.buf;
    const uint64_t *eni_hash = eni_hashes.buf;
    Py_ssize_t n_kinds = kinds.len, n_enis = eni_hashes.len / 8;
    const int32_t *so = (const int32_t *)src_off.buf + src_offset, *d_o = (const int32_t *)dst_off.buf + dst_offset;
    const uint8_t *sd = src_data.buf, *dd = dst_data.buf;
    Py_ssize_t front = 0, back = n;
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t at = time[i];
        if (at < 0 || at > max_time || (here && !here[i])) continue;
        int32_t a = act[i], e = eni_code[i];
        if (a < 0 || a >= n_kinds || e < 0 || e >= n_enis) continue; /* not a word of the dictionary: no candidate */
        int c = kind[a];
        if (c == 0) continue;
        int64_t p = int_at(&proto, wide[2], i);
        if (p != 6 && p != 17) continue;
        int64_t s = int_at(&sport, wide[0], i), d = int_at(&dport, wide[1], i);
        int request = c == 1 && s >= 1024 && s <= 65535 && d >= 0 && d < s;
        int reply = c == 2 && d >= 1024 && d <= 65535 && s >= 0 && s < d;
        if (!request && !reply) continue;
        /* each end checked against both ends of the array: rows not looked at were not checked */
        if (so[i] < so[0] || so[i + 1] < so[i] || so[i + 1] > so[n] || d_o[i] < d_o[0] || d_o[i + 1] < d_o[i] ||
            d_o[i + 1] > d_o[n]) {
            ok = 0;
            break;
        }
        uint64_t hs = hash_value(sd, so[i], so[i + 1]), hd = hash_value(dd, d_o[i], d_o[i + 1]);
        Py_ssize_t slot = request ? front++ : --back;
        rows[slot] = (int32_t)i;
        windows[slot] = at / window_seconds * window_seconds;
        hashes[slot] = request ? flow_key(eni_hash[e], hd, hs, d, s, p) : flow_key(eni_hash[e], hs, hd, s, d, p);
    }
    Py_END_ALLOW_THREADS
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "offsets not monotonic");
        goto done;
    }
    result = Py_BuildValue("(nnOOO)", front, n - back, rows_out, windows_out, hashes_out);
done:
    Py_XDECREF(rows_out);
    Py_XDECREF(windows_out);
    Py_XDECREF(hashes_out);
    Py_buffer *all[] = {&t, &sport, &dport, &proto, &present, &action, &kinds, &eni, &eni_hashes, &src_off, &src_data, &dst_off, &dst_data};
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++) PyBuffer_Release(all[k]);
    return result;
}

/*
 * insight_counts(n, flags, proto, sport, dport, direction, direction_kinds, src_offsets, src_data, src_offset,
 *                src_present, eni, n_eni, action, n_action, path, vpc, n_vpc, service, service_kinds, nbytes,
 *                do_ipv6, do_paths, do_gateway) -> (ipv6, path_records, path_bytes, gateway_records, gateway_bytes)
 *
 * The IPv6, traffic-path and gateway signals of one batch in one pass (streamer.aggregate.insights: `_ipv6`,
 * `_paths` and `_gateway` are the numpy reference; both count the same). Integer columns are int32 or int64
 * buffers (by size; empty: absent, -1 null), string key columns int32 dictionary codes (-1 null) with a
 * kind byte per word where the signal tests the word (direction 1 ingress 2 egress; service 1 S3 or
 * DynamoDB), `src_present` a byte per row (empty: all present), `nbytes` int64 (empty: 0). Each output is
 * an int64 count per cell: IPv6 starts per (eni, action) at eni * n_action + action; records and bytes per
 * (vpc + 1, path 1..8) at (vpc + 1) * 9 + path; per (vpc + 1, service) at (vpc + 1) * n_service + service.
 * The GIL is released.
 */
static inline int int_width(const Py_buffer *b, Py_ssize_t n) { return b->len == 8 * n ? 8 : b->len == 4 * n ? 4 : 0; }

static inline int64_t int_of(const Py_buffer *b, int width, Py_ssize_t i) {
    return width == 8 ? ((const int64_t *)b->buf)[i] : (int64_t)((const int32_t *)b->buf)[i];
}

static inline int hex_digit(uint8_t c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

static PyObject *insight_counts(PyObject *self, PyObject *args) {
    (void)self;
    Py_ssize_t n, src_offset, n_eni, n_action, n_vpc;
    Py_buffer flags, proto, sport, dport, direction, dir_kinds, src_off, src_data, src_present, eni, action, path, vpc,
        service, svc_kinds, nbytes;
    int do_ipv6, do_paths, do_gateway;
    if (!PyArg_ParseTuple(args, "ny*y*y*y*y*y*y*y*ny*y*ny*ny*y*ny*y*y*ppp", &n, &flags, &proto, &sport, &dport,
                          &direction, &dir_kinds, &src_off, &src_data, &src_offset, &src_present, &eni, &n_eni, &action,
                          &n_action, &path, &vpc, &n_vpc, &service, &svc_kinds, &nbytes, &do_ipv6, &do_paths,
                          &do_gateway))
        return NULL;
    PyObject *result = NULL, *out[5] = {NULL, NULL, NULL, NULL, NULL};
    Py_buffer *all[] = {&flags, &proto, &sport, &dport, &direction, &dir_kinds, &src_off, &src_data, &src_present,
                        &eni, &action, &path, &vpc, &service, &svc_kinds, &nbytes};
    Py_ssize_t n_dir = dir_kinds.len, n_svc = svc_kinds.len;
    /* codes are int32, so no dictionary has more words; with these bounds no size below overflows */
    if (n < 0 || n > PY_SSIZE_T_MAX / 8 || n_eni < 0 || n_eni > INT32_MAX || n_action < 0 || n_action > INT32_MAX ||
        n_vpc < 0 || n_vpc >= INT32_MAX || n_svc > INT32_MAX)
        goto bad;
    int w_flags = int_width(&flags, n), w_proto = int_width(&proto, n), w_sport = int_width(&sport, n),
        w_dport = int_width(&dport, n), w_path = int_width(&path, n);
    /* each signal's columns, checked only when the signal is counted */
    if (do_ipv6) {
        int by_flags = flags.len != 0;
        if ((by_flags && !w_flags) || (!by_flags && (!w_proto || !w_sport || !w_dport)) || direction.len != 4 * n ||
            eni.len != 4 * n || action.len != 4 * n || (src_present.len != 0 && src_present.len != n) ||
            check_strings(&src_off, &src_data, src_offset, n) < 0)
            goto bad;
    }
    if ((do_paths || do_gateway) && (!w_path || (vpc.len != 0 && vpc.len != 4 * n) || (nbytes.len != 0 && nbytes.len != 8 * n)))
        goto bad;
    if (do_gateway && (direction.len != 4 * n || service.len != 4 * n)) goto bad;
    Py_ssize_t sizes[5] = {do_ipv6 ? n_eni * n_action : 0, do_paths ? (n_vpc + 1) * 9 : 0, do_paths ? (n_vpc + 1) * 9 : 0,
                           do_gateway ? (n_vpc + 1) * n_svc : 0, do_gateway ? (n_vpc + 1) * n_svc : 0};
    for (int k = 0; k < 5; k++) {
        if (sizes[k] > PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(int64_t)) {
            PyErr_NoMemory();
            goto done;
        }
        out[k] = PyBytes_FromStringAndSize(NULL, sizes[k] * (Py_ssize_t)sizeof(int64_t));
        if (out[k] == NULL) goto done;
        memset(PyBytes_AS_STRING(out[k]), 0, (size_t)sizes[k] * sizeof(int64_t));
    }
    int64_t *ipv6 = (int64_t *)PyBytes_AS_STRING(out[0]), *path_n = (int64_t *)PyBytes_AS_STRING(out[1]),
            *path_b = (int64_t *)PyBytes_AS_STRING(out[2]), *gw_n = (int64_t *)PyBytes_AS_STRING(out[3]),
            *gw_b = (int64_t *)PyBytes_AS_STRING(out[4]);
    const int32_t *dir = direction.buf, *e_code = eni.buf, *a_code = action.buf, *v_code = vpc.len ? vpc.buf : NULL,
                  *s_code = service.buf;
    const uint8_t *dir_kind = dir_kinds.buf, *svc_kind = svc_kinds.buf, *present = src_present.len ? src_present.buf : NULL;
    const int64_t *bytes_of = nbytes.len ? nbytes.buf : NULL;
    const int32_t *so = do_ipv6 ? (const int32_t *)src_off.buf + src_offset : NULL;
    const uint8_t *sd = src_data.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        int d = -1; /* the row's direction kind, when a signal needs it */
        if (do_ipv6 || do_gateway) {
            int32_t c = dir[i];
            d = c >= 0 && c < n_dir ? dir_kind[c] : 0;
        }
        if (do_paths || do_gateway) {
            int64_t p = int_of(&path, w_path, i);
            int32_t v = v_code ? v_code[i] : -1;
            if (v < -1 || v >= n_vpc) v = -1; /* not a word of the dictionary: as null */
            int64_t b = bytes_of ? bytes_of[i] : 0;
            if (do_paths && p >= 1 && p <= 8) {
                path_n[(v + 1) * 9 + p]++;
                path_b[(v + 1) * 9 + p] = (int64_t)((uint64_t)path_b[(v + 1) * 9 + p] + (uint64_t)b); /* wraps as numpy */
            }
            if (do_gateway && (p == 1 || p == 8) && d == 2) {
                int32_t s = s_code[i];
                if (s >= 0 && s < n_svc && svc_kind[s] == 1) {
                    gw_n[(v + 1) * n_svc + s]++;
                    gw_b[(v + 1) * n_svc + s] = (int64_t)((uint64_t)gw_b[(v + 1) * n_svc + s] + (uint64_t)b);
                }
            }
        }
        if (do_ipv6 && d == 1) {
            int starts;
            if (w_flags) {
                int64_t f = int_of(&flags, w_flags, i);
                starts = f >= 0 && (f & 18) == 2;
            } else {
                int64_t p = int_of(&proto, w_proto, i), sp = int_of(&sport, w_sport, i), dp = int_of(&dport, w_dport, i);
                starts = (p == 6 || p == 17) && dp >= 0 && dp < 1024 && sp >= 1024;
            }
            if (!starts || (present && !present[i])) continue;
            int32_t start = so[i], end = so[i + 1];
            if (start < so[0] || end > so[n] || end - start < 5) continue;
            const uint8_t *h = sd + start;
            if (h[4] != ':' || (h[0] != '2' && h[0] != '3') || !hex_digit(h[1]) || !hex_digit(h[2]) || !hex_digit(h[3]))
                continue;
            int32_t e = e_code[i], a = a_code[i];
            if (e >= 0 && e < n_eni && a >= 0 && a < n_action) ipv6[(Py_ssize_t)e * n_action + a]++;
        }
    }
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("(OOOOO)", out[0], out[1], out[2], out[3], out[4]);
    goto done;
bad:
    PyErr_SetString(PyExc_ValueError, "insight_counts: a buffer of the wrong size");
done:
    for (int k = 0; k < 5; k++) Py_XDECREF(out[k]);
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++) PyBuffer_Release(all[k]);
    return result;
}

/*
 * The buffers of merge_keys and sort_requests: C-contiguous arrays of 8-byte integers (or plain bytes), outputs
 * writable. Their words are read and written raw: an array of Python objects given as an output would have
 * pointers written over (a crash when it is freed), one of floats or of another width would hold garbage.
 * Gets `n` buffers into `views`; on failure none is held and an exception is set.
 */
static int integer_words(PyObject *const *objs, Py_buffer *views, int n, int first_output) {
    for (int i = 0; i < n; i++) {
        int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (i >= first_output ? PyBUF_WRITABLE : 0);
        if (PyObject_GetBuffer(objs[i], &views[i], flags) < 0) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "argument %d: a C-contiguous %sbuffer of 8-byte integers", i + 1,
                         i >= first_output ? "writable " : "");
            while (i > 0) PyBuffer_Release(&views[--i]);
            return 0;
        }
        const char *f = views[i].format != NULL ? views[i].format : "B";
        if (*f == '@' || *f == '=' || *f == '<' || *f == '>' || *f == '!') f++;
        int plain = f[0] != '\0' && f[1] == '\0';
        int ok = plain && ((views[i].itemsize == 8 && strchr("qQlLnN", f[0]) != NULL) ||
                           (views[i].itemsize == 1 && strchr("bBc", f[0]) != NULL));
        if (!ok) {
            PyErr_Format(PyExc_ValueError, "argument %d: a buffer of 8-byte integers, not of format '%s'", i + 1,
                         views[i].format != NULL ? views[i].format : "B");
            while (i >= 0) PyBuffer_Release(&views[i--]);
            return 0;
        }
    }
    return 1;
}

/*
 * merge_keys(known, new, out, added) -> (merged, fresh)
 *
 * The NACL pairing's request sets (pairing._add_requests; `_merge_reference` is the numpy reference):
 * `known` and `new` are sorted uint64 arrays, each without repeats; `out` (room for both) gets their union,
 * sorted, `added` (room for `new`) the keys of `new` not in `known`, in order. One pass over both, where a
 * binary search per new key and a scatter cost several. Returns how many of each were written. The GIL is
 * released.
 */
static PyObject *merge_keys(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *objs[4];
    Py_buffer views[4];
    if (!PyArg_ParseTuple(args, "OOOO", &objs[0], &objs[1], &objs[2], &objs[3])) return NULL;
    if (!integer_words(objs, views, 4, 2)) return NULL;
    Py_buffer known = views[0], fresh = views[1], out = views[2], added = views[3];
    PyObject *result = NULL;
    Py_ssize_t nk = known.len / 8, nf = fresh.len / 8;
    if (known.len % 8 || fresh.len % 8 || out.len < known.len + fresh.len || added.len < fresh.len) {
        PyErr_SetString(PyExc_ValueError, "key buffers of the wrong size");
        goto done;
    }
    const uint64_t *k = known.buf, *f = fresh.buf;
    uint64_t *o = out.buf, *a = added.buf;
    Py_ssize_t i = 0, j = 0, m = 0, n_added = 0;
    Py_BEGIN_ALLOW_THREADS
    while (i < nk && j < nf) {
        uint64_t x = k[i], y = f[j];
        if (x < y) {
            o[m++] = x;
            i++;
        } else if (y < x) {
            o[m++] = y;
            a[n_added++] = y;
            j++;
        } else {
            o[m++] = x;
            i++;
            j++;
        }
    }
    if (i < nk) {
        memcpy(o + m, k + i, (size_t)(nk - i) * 8);
        m += nk - i;
    }
    if (j < nf) {
        memcpy(o + m, f + j, (size_t)(nf - j) * 8);
        memcpy(a + n_added, f + j, (size_t)(nf - j) * 8);
        m += nf - j;
        n_added += nf - j;
    }
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("(nn)", m, n_added);
done:
    for (int i = 0; i < 4; i++) PyBuffer_Release(&views[i]); /* the originals, not the copies named above */
    return result;
}

/*
 * sort_requests(windows, keys, out_windows, out_keys) -> n
 *
 * One batch's NACL requests (int64 windows, uint64 keys, as many of each) sorted by window, then key, each
 * pair once, into the out buffers (room for all); returns how many were written. pairing._distinct's numpy
 * path is the reference. An LSD radix sort: the key's eight bytes, then the window's (sign bit flipped),
 * a byte that is the same in every pair skipped (a batch's windows differ in one or two). The GIL is released.
 */
static PyObject *sort_requests(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *objs[4];
    Py_buffer views[4];
    if (!PyArg_ParseTuple(args, "OOOO", &objs[0], &objs[1], &objs[2], &objs[3])) return NULL;
    if (!integer_words(objs, views, 4, 2)) return NULL;
    Py_buffer win = views[0], key = views[1], out_win = views[2], out_key = views[3];
    PyObject *result = NULL;
    Py_ssize_t n = key.len / 8, kept = 0;
    uint64_t *tmp = NULL;
    size_t(*hist)[256] = NULL;
    if (key.len % 8 || win.len != key.len || out_win.len < win.len || out_key.len < key.len) {
        PyErr_SetString(PyExc_ValueError, "request buffers of the wrong size");
        goto done;
    }
    if (n > 0) {
        tmp = malloc((size_t)n * 16);
        hist = calloc(16, sizeof *hist);
        if (tmp == NULL || hist == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    if (n > 0) {
        const uint64_t SIGN = 1ULL << 63;
        /* three places a pass reads from or writes to: the input, the output, the scratch */
        uint64_t *in_w = win.buf, *in_k = key.buf, *o_w = out_win.buf, *o_k = out_key.buf;
        uint64_t *t_w = tmp, *t_k = tmp + n;
        for (Py_ssize_t i = 0; i < n; i++) {
            uint64_t k = in_k[i], w = in_w[i] ^ SIGN;
            for (int b = 0; b < 8; b++) {
                hist[b][(k >> (8 * b)) & 255]++;
                hist[8 + b][(w >> (8 * b)) & 255]++;
            }
        }
        uint64_t *src_w = in_w, *src_k = in_k;
        for (int pass = 0; pass < 16; pass++) {
            size_t *h = hist[pass];
            int shift = 8 * (pass & 7);
            int same = 0;
            for (int x = 0; x < 256; x++) {
                if (h[x] == (size_t)n) same = 1;
            }
            if (same) continue;
            size_t at = 0;
            for (int x = 0; x < 256; x++) {
                size_t c = h[x];
                h[x] = at;
                at += c;
            }
            uint64_t *dst_w = src_w == o_w ? t_w : o_w, *dst_k = src_k == o_k ? t_k : o_k;
            for (Py_ssize_t i = 0; i < n; i++) {
                uint64_t w = src_w[i], k = src_k[i];
                uint64_t digit = pass < 8 ? (k >> shift) & 255 : ((w ^ SIGN) >> shift) & 255;
                size_t to = h[digit]++;
                dst_w[to] = w;
                dst_k[to] = k;
            }
            src_w = dst_w;
            src_k = dst_k;
        }
        /* each pair once, into the output (in place when the last pass wrote there) */
        for (Py_ssize_t i = 0; i < n; i++) {
            if (kept && src_w[i] == o_w[kept - 1] && src_k[i] == o_k[kept - 1]) continue;
            o_w[kept] = src_w[i];
            o_k[kept] = src_k[i];
            kept++;
        }
    }
    Py_END_ALLOW_THREADS
    result = PyLong_FromSsize_t(kept);
done:
    free(tmp);
    free(hist);
    for (int i = 0; i < 4; i++) PyBuffer_Release(&views[i]); /* the originals, not the copies named above */
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "scan(parts, kinds, header) -> (rows, columns) | None: see the module source."},
    {"hash_strings", hash_strings, METH_VARARGS, "hash_strings(offsets, data, offset, length) -> bytes: see the source."},
    {"insight_counts", insight_counts, METH_VARARGS, "insight_counts(...) -> five int64 count buffers: see the source."},
    {"nacl_candidates", nacl_candidates, METH_VARARGS, "nacl_candidates(...) -> (requests, replies, rows, windows, hashes): see the source."},
    {"merge_keys", merge_keys, METH_VARARGS, "merge_keys(known, new, out, added) -> (merged, fresh): see the source."},
    {"sort_requests", sort_requests, METH_VARARGS, "sort_requests(windows, keys, out_windows, out_keys) -> n: see the source."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_scan", "Native tokenizer for clean flow-log chunks.", -1, methods, NULL, NULL, NULL, NULL,
};

/* VERSION 2: field kind 4 (int32) and nacl_candidates; 3: insight_counts; 4: merge_keys and sort_requests */
PyMODINIT_FUNC PyInit__scan(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "VERSION", 4) < 0) Py_CLEAR(m);
    return m;
}
