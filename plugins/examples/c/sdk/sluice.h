// A small helper layer over wit-bindgen's C bindings for sluice filters:
// default hooks (link sluice.c and define only the hooks a filter needs),
// and helpers for the verdicts, header edits and config values that most
// filters use. Ownership follows the bindings: exported functions own their
// arguments; strings handed back to sluice are malloc'ed.
#ifndef SLUICE_H
#define SLUICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "filter.h"

// A NUL-terminated, malloc'ed copy of a WIT string (WIT strings have none).
char *sluice_cstr(const filter_string_t *s);

// The string value of top-level `key` in a JSON object such as the plugin's
// config (no escapes inside the value), into `out`; false if absent, empty,
// or longer than `size - 1`.
bool sluice_json_string(const filter_string_t *json, const char *key, char *out, size_t size);

// The first value of header `name`, malloc'ed; "" when the message has none.
char *sluice_header(filter_borrow_message_t message, const char *name);

// Sets `ret` to reject with `code`, an enhanced status and a text.
void sluice_reject(filter_verdict_t *ret, uint16_t code, const char *enhanced, const char *text);

// Sets `ret` to continue the chain and prepend one header to the message.
void sluice_next_with_header(filter_data_result_t *ret, const char *name, const char *value);

#endif
