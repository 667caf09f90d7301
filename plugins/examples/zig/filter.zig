//! The sluice example filter in Zig, over the wit-bindgen C bindings:
//! rejects a message whose Subject contains the configured word, tags every
//! other message with X-Filtered-By, and refuses recipients whose local part
//! starts with "noreply". Exported functions own their arguments (hence the
//! *_free calls and the drop of the message borrow).
const std = @import("std");
// sluice_h.zig: `zig translate-c sluice.h` (build.sh), as @cImport is gone;
// ../c/sdk/sluice.c supplies the hooks not defined here and the helpers.
const c = @import("sluice_h.zig");

var word_buf: [64]u8 = undefined;
var word: []const u8 = "";

fn slice(s: c.filter_string_t) []const u8 {
    return if (s.len == 0) "" else s.ptr[0..s.len];
}

export fn exports_filter_init(config: *c.filter_string_t, err: *c.filter_string_t) bool {
    defer c.filter_string_free(config);
    if (!c.sluice_json_string(config, "word", &word_buf, word_buf.len)) {
        c.filter_string_dup(err, "config needs a non-empty \"word\" of at most 63 characters");
        return false;
    }
    word = std.ascii.lowerString(&word_buf, std.mem.sliceTo(&word_buf, 0));
    return true;
}

export fn exports_filter_on_rcpt(session: *c.filter_session_t, recipient: *c.filter_address_t, ret: *c.filter_verdict_t) void {
    defer c.sluice_filter_types_session_free(session);
    defer c.sluice_filter_types_address_free(recipient);
    ret.tag = c.SLUICE_FILTER_TYPES_VERDICT_NEXT;
    if (std.ascii.startsWithIgnoreCase(slice(recipient.local_part), "noreply"))
        c.sluice_reject(ret, 550, "5.1.1", "This address accepts no mail");
}

export fn exports_filter_on_data(session: *c.filter_session_t, message: c.filter_borrow_message_t, ret: *c.filter_data_result_t) void {
    defer c.sluice_filter_types_session_free(session);
    defer c.sluice_filter_mail_message_drop_borrow(message);
    const subject = c.sluice_header(message, "Subject");
    defer std.c.free(subject);
    ret.* = std.mem.zeroes(c.filter_data_result_t);
    if (std.ascii.findIgnoreCase(std.mem.span(subject), word) != null) {
        var text: [128]u8 = undefined;
        c.sluice_reject(&ret.verdict, 550, "5.7.1", std.mem.printSentinel(&text, "Subject contains \"{s}\"", .{word}, 0) catch "Subject refused");
        return;
    }
    c.sluice_next_with_header(ret, "X-Filtered-By", "zig-example");
}
