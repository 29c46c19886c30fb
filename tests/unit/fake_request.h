/* Hand-built requests for the C unit tests, laid out as the parser lays
 * them out: req->head holds the url, then each header name and value, each
 * NUL-terminated; req->hdr holds offsets into it. */
#ifndef MG_TEST_FAKE_REQUEST_H
#define MG_TEST_FAKE_REQUEST_H

#include <stdlib.h>
#include <string.h>
#include "moongate/http.h"

static uint32_t put(mg_request *req, const char *s) {
  uint32_t off = (uint32_t)req->head.len;
  mg_buf_append(&req->head, s, strlen(s) + 1);   /* keep the NUL */
  return off;
}

static void add_header(mg_request *req, const char *name, const char *value) {
  if (req->nhdr == req->hdr_cap) {
    req->hdr_cap = req->hdr_cap ? req->hdr_cap * 2 : 4;
    req->hdr = realloc(req->hdr, (size_t)req->hdr_cap * sizeof(mg_header));
    assert_non_null(req->hdr);
  }
  mg_header *h = &req->hdr[req->nhdr++];
  h->name = put(req, name);
  h->name_len = (uint32_t)strlen(name);
  h->value = put(req, value);
  h->value_len = (uint32_t)strlen(value);
}

#endif
