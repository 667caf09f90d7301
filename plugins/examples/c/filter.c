// The sluice example filter in C (wit-bindgen C bindings, clang, wasi-libc):
// rejects a message whose Subject contains the configured word, tags every
// other message with X-Filtered-By, and refuses recipients whose local part
// starts with "noreply". Exported functions own their arguments (hence the
// *_free calls and the drop of the message borrow); strings returned to
// sluice must be malloc'ed (string_dup).
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <ctype.h>

#include "filter.h"

static char word[64];

// WIT strings are not NUL-terminated.
static char *cstr(const filter_string_t *s) {
  char *c = malloc(s->len + 1);
  memcpy(c, s->ptr, s->len);
  c[s->len] = '\0';
  return c;
}

static void reject(filter_verdict_t *ret, const char *enhanced, const char *text) {
  ret->tag = SLUICE_FILTER_TYPES_VERDICT_REJECT;
  ret->val.reject.is_some = true;
  ret->val.reject.val.code = 550;
  ret->val.reject.val.enhanced.is_some = true;
  filter_string_dup(&ret->val.reject.val.enhanced.val, enhanced);
  filter_string_dup(&ret->val.reject.val.text, text);
}

// The config is {"word": "..."}; a string without escapes is all it needs.
bool exports_filter_init(filter_string_t *config, filter_string_t *err) {
  char *json = cstr(config), *key = strstr(json, "\"word\"");
  char *colon = key ? strchr(key + 6, ':') : NULL;
  char *start = colon ? strchr(colon, '"') : NULL, *end = start ? strchr(start + 1, '"') : NULL;
  size_t len = end ? (size_t)(end - start - 1) : 0;
  bool ok = len > 0 && len < sizeof word;
  if (ok) {
    for (size_t i = 0; i < len; i++) word[i] = (char)tolower((unsigned char)start[1 + i]);
  } else {
    filter_string_dup(err, "config needs a non-empty \"word\" of at most 63 characters");
  }
  free(json);
  filter_string_free(config);
  return ok;
}

void exports_filter_on_rcpt(filter_session_t *session, filter_address_t *recipient, filter_verdict_t *ret) {
  filter_string_t *local = &recipient->local_part;
  ret->tag = SLUICE_FILTER_TYPES_VERDICT_NEXT;
  if (local->len >= 7 && strncasecmp((const char *)local->ptr, "noreply", 7) == 0)
    reject(ret, "5.1.1", "This address accepts no mail");
  sluice_filter_types_session_free(session);
  sluice_filter_types_address_free(recipient);
}

void exports_filter_on_data(filter_session_t *session, filter_borrow_message_t message, filter_data_result_t *ret) {
  filter_string_t name, value;
  filter_string_set(&name, "Subject");
  char *subject = sluice_filter_mail_method_message_header(message, &name, &value) ? cstr(&value) : strdup("");
  memset(ret, 0, sizeof *ret);
  if (strcasestr(subject, word)) {
    char text[128];
    snprintf(text, sizeof text, "Subject contains \"%s\"", word);
    reject(&ret->verdict, "5.7.1", text);
  } else {
    sluice_filter_types_modification_t *tag = malloc(sizeof *tag);
    tag->tag = SLUICE_FILTER_TYPES_MODIFICATION_PREPEND_HEADER;
    filter_string_dup(&tag->val.prepend_header.name, "X-Filtered-By");
    filter_string_dup(&tag->val.prepend_header.value, "c-example");
    ret->verdict.tag = SLUICE_FILTER_TYPES_VERDICT_NEXT;
    ret->modifications = (sluice_filter_types_list_modification_t){tag, 1};
  }
  free(subject);
  sluice_filter_types_session_free(session);
  sluice_filter_mail_message_drop_borrow(message);
}

// The hooks this filter has no opinion on.
void exports_filter_on_connect(filter_session_t *session, filter_verdict_t *ret) {
  ret->tag = SLUICE_FILTER_TYPES_VERDICT_NEXT;
  sluice_filter_types_session_free(session);
}

void exports_filter_on_helo(filter_session_t *session, filter_string_t *helo, filter_verdict_t *ret) {
  ret->tag = SLUICE_FILTER_TYPES_VERDICT_NEXT;
  sluice_filter_types_session_free(session);
  filter_string_free(helo);
}

void exports_filter_on_mail(filter_session_t *session, filter_address_t *maybe_reverse_path, filter_verdict_t *ret) {
  ret->tag = SLUICE_FILTER_TYPES_VERDICT_NEXT;
  sluice_filter_types_session_free(session);
  if (maybe_reverse_path) sluice_filter_types_address_free(maybe_reverse_path);
}
