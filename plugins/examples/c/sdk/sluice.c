// Helpers declared in sluice.h, and a default for every hook: each returns
// `next` (no opinion) and frees its arguments. They are weak definitions,
// so a filter's own hook replaces the default at link time.
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "sluice.h"

char *sluice_cstr(const filter_string_t *s) {
  char *c = malloc(s->len + 1);
  if (!c) abort();
  if (s->len) memcpy(c, s->ptr, s->len);
  c[s->len] = '\0';
  return c;
}

bool sluice_json_string(const filter_string_t *json, const char *key, char *out, size_t size) {
  char *text = sluice_cstr(json), quoted[128];
  bool found = false;
  if (strlen(key) + 3 <= sizeof quoted) {
    strcpy(quoted, "\"");
    strcat(strcat(quoted, key), "\"");
    char *at = strstr(text, quoted), *colon = at ? strchr(at + strlen(quoted), ':') : NULL;
    char *start = colon ? strchr(colon, '"') : NULL, *end = start ? strchr(start + 1, '"') : NULL;
    size_t len = end ? (size_t)(end - start - 1) : 0;
    if (len > 0 && len < size) {
      memcpy(out, start + 1, len);
      out[len] = '\0';
      found = true;
    }
  }
  free(text);
  return found;
}

char *sluice_header(filter_borrow_message_t message, const char *name) {
  filter_string_t wit_name, value;
  filter_string_set(&wit_name, name);
  if (!sluice_filter_mail_method_message_header(message, &wit_name, &value)) return strdup("");
  char *copy = sluice_cstr(&value);
  filter_string_free(&value);
  return copy;
}

void sluice_reject(filter_verdict_t *ret, uint16_t code, const char *enhanced, const char *text) {
  ret->tag = SLUICE_FILTER_TYPES_VERDICT_REJECT;
  ret->val.reject.is_some = true;
  ret->val.reject.val.code = code;
  ret->val.reject.val.enhanced.is_some = true;
  filter_string_dup(&ret->val.reject.val.enhanced.val, enhanced);
  filter_string_dup(&ret->val.reject.val.text, text);
}

void sluice_next_with_header(filter_data_result_t *ret, const char *name, const char *value) {
  sluice_filter_types_modification_t *edit = malloc(sizeof *edit);
  if (!edit) abort();
  edit->tag = SLUICE_FILTER_TYPES_MODIFICATION_PREPEND_HEADER;
  filter_string_dup(&edit->val.prepend_header.name, name);
  filter_string_dup(&edit->val.prepend_header.value, value);
  ret->verdict.tag = SLUICE_FILTER_TYPES_VERDICT_NEXT;
  ret->modifications = (sluice_filter_types_list_modification_t){edit, 1};
}

__attribute__((weak)) bool exports_filter_init(filter_string_t *config, filter_string_t *err) {
  (void)err;
  filter_string_free(config);
  return true;
}

__attribute__((weak)) void exports_filter_on_connect(filter_session_t *session, filter_verdict_t *ret) {
  ret->tag = SLUICE_FILTER_TYPES_VERDICT_NEXT;
  sluice_filter_types_session_free(session);
}

__attribute__((weak)) void exports_filter_on_helo(filter_session_t *session, filter_string_t *helo,
                                                  filter_verdict_t *ret) {
  ret->tag = SLUICE_FILTER_TYPES_VERDICT_NEXT;
  sluice_filter_types_session_free(session);
  filter_string_free(helo);
}

__attribute__((weak)) void exports_filter_on_mail(filter_session_t *session, filter_address_t *maybe_reverse_path,
                                                  filter_verdict_t *ret) {
  ret->tag = SLUICE_FILTER_TYPES_VERDICT_NEXT;
  sluice_filter_types_session_free(session);
  if (maybe_reverse_path) sluice_filter_types_address_free(maybe_reverse_path);
}

__attribute__((weak)) void exports_filter_on_rcpt(filter_session_t *session, filter_address_t *recipient,
                                                  filter_verdict_t *ret) {
  ret->tag = SLUICE_FILTER_TYPES_VERDICT_NEXT;
  sluice_filter_types_session_free(session);
  sluice_filter_types_address_free(recipient);
}

__attribute__((weak)) void exports_filter_on_data(filter_session_t *session, filter_borrow_message_t message,
                                                  filter_data_result_t *ret) {
  memset(ret, 0, sizeof *ret);
  ret->verdict.tag = SLUICE_FILTER_TYPES_VERDICT_NEXT;
  sluice_filter_types_session_free(session);
  sluice_filter_mail_message_drop_borrow(message);
}
