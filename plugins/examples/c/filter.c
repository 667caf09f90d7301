// The sluice example filter in C: rejects a message whose Subject contains
// the configured word, tags every other message with X-Filtered-By, and
// refuses recipients whose local part starts with "noreply". sdk/sluice.c
// supplies the hooks not defined here; exported functions own (and free)
// their arguments.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "sluice.h"

static char word[64];

bool exports_filter_init(filter_string_t *config, filter_string_t *err) {
  bool ok = sluice_json_string(config, "word", word, sizeof word);
  if (!ok) filter_string_dup(err, "config needs a non-empty \"word\" of at most 63 characters");
  filter_string_free(config);
  return ok;
}

void exports_filter_on_rcpt(filter_session_t *session, filter_address_t *recipient, filter_verdict_t *ret) {
  filter_string_t *local = &recipient->local_part;
  ret->tag = SLUICE_FILTER_TYPES_VERDICT_NEXT;
  if (local->len >= 7 && strncasecmp((const char *)local->ptr, "noreply", 7) == 0)
    sluice_reject(ret, 550, "5.1.1", "This address accepts no mail");
  sluice_filter_types_session_free(session);
  sluice_filter_types_address_free(recipient);
}

void exports_filter_on_data(filter_session_t *session, filter_borrow_message_t message, filter_data_result_t *ret) {
  char *subject = sluice_header(message, "Subject"), text[128];
  memset(ret, 0, sizeof *ret);
  if (strcasestr(subject, word)) {
    snprintf(text, sizeof text, "Subject contains \"%s\"", word);
    sluice_reject(&ret->verdict, 550, "5.7.1", text);
  } else {
    sluice_next_with_header(ret, "X-Filtered-By", "c-example");
  }
  free(subject);
  sluice_filter_types_session_free(session);
  sluice_filter_mail_message_drop_borrow(message);
}
