/* JSON member lookup without decoding.
 *
 * A gateway often needs one or two members of a JSON object it relays -- the
 * `usage` of an AI provider's answer, its `model` -- and nothing else.
 * Decoding the whole text into Lua tables costs far more than the relay's
 * own work; this scanner checks the whole text is one JSON object -- as
 * lua-cjson would decode it, leniencies included (raw control characters in
 * strings, numbers as strtod reads them) -- and reports where the wanted
 * top-level members' values are, without building anything. */
#ifndef MOONGATE_JSON_SCAN_H
#define MOONGATE_JSON_SCAN_H

#include <stddef.h>

#define MG_JSON_MAX_DEPTH 1000   /* as cjson's default decode depth */

typedef struct {
  const char *key;   /* wanted member name (as decoded, UTF-8) */
  size_t key_len;
  size_t start;      /* out: offset of its value in the text ... */
  size_t len;        /* ... and its length; 0 when the member is absent */
} mg_json_member;

/* Scans `text` (n bytes): 0 when it is a JSON object, filling
 * each wanted member's value span (the last occurrence, as decoders keep
 * the last of duplicate keys); -1 otherwise, with a short reason in *err. */
int mg_json_scan_members(const char *text, size_t n, mg_json_member *want, int nwant,
                         const char **err);

#endif
