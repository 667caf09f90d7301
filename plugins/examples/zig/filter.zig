//! The sluice example filter in Zig, over the wit-bindgen C bindings:
//! rejects a message whose Subject contains the configured word, tags every
//! other message with X-Filtered-By, and refuses recipients whose local part
//! starts with "noreply". Exported functions own their arguments (hence the
//! *_free calls and the drop of the message borrow); strings returned to
//! sluice must be malloc'ed (string_dup).
const std = @import("std");
// filter_h.zig: `zig translate-c filter.h` (build.sh), as @cImport is gone.
const c = @import("filter_h.zig");

var word_buf: [64]u8 = undefined;
var word: []const u8 = "";

fn slice(s: c.filter_string_t) []const u8 {
    return if (s.len == 0) "" else s.ptr[0..s.len];
}

fn reject(ret: *c.filter_verdict_t, enhanced: [*:0]const u8, text: [*:0]const u8) void {
    ret.tag = c.SLUICE_FILTER_TYPES_VERDICT_REJECT;
    ret.val.reject = .{ .is_some = true, .val = .{ .code = 550, .enhanced = .{ .is_some = true, .val = undefined }, .text = undefined } };
    c.filter_string_dup(&ret.val.reject.val.enhanced.val, enhanced);
    c.filter_string_dup(&ret.val.reject.val.text, text);
}

export fn exports_filter_init(config: *c.filter_string_t, err: *c.filter_string_t) bool {
    defer c.filter_string_free(config);
    const Config = struct { word: []const u8 = "" };
    const parsed = std.json.parseFromSlice(Config, std.heap.c_allocator, slice(config.*), .{ .ignore_unknown_fields = true }) catch null;
    defer if (parsed) |p| p.deinit();
    const w = if (parsed) |p| p.value.word else "";
    if (w.len == 0 or w.len > word_buf.len) {
        c.filter_string_dup(err, "config needs a non-empty \"word\" of at most 64 characters");
        return false;
    }
    word = std.ascii.lowerString(&word_buf, w);
    return true;
}

export fn exports_filter_on_rcpt(session: *c.filter_session_t, recipient: *c.filter_address_t, ret: *c.filter_verdict_t) void {
    defer c.sluice_filter_types_session_free(session);
    defer c.sluice_filter_types_address_free(recipient);
    ret.tag = c.SLUICE_FILTER_TYPES_VERDICT_NEXT;
    if (std.ascii.startsWithIgnoreCase(slice(recipient.local_part), "noreply"))
        reject(ret, "5.1.1", "This address accepts no mail");
}

export fn exports_filter_on_data(session: *c.filter_session_t, message: c.filter_borrow_message_t, ret: *c.filter_data_result_t) void {
    defer c.sluice_filter_types_session_free(session);
    defer c.sluice_filter_mail_message_drop_borrow(message);
    var name: c.filter_string_t = undefined;
    var value: c.filter_string_t = .{ .ptr = null, .len = 0 };
    c.filter_string_set(&name, "Subject");
    _ = c.sluice_filter_mail_method_message_header(message, &name, &value);
    defer c.filter_string_free(&value);
    ret.* = std.mem.zeroes(c.filter_data_result_t);
    if (std.ascii.findIgnoreCase(slice(value), word) != null) {
        var text: [128]u8 = undefined;
        reject(&ret.verdict, "5.7.1", std.mem.printSentinel(&text, "Subject contains \"{s}\"", .{word}, 0) catch "Subject refused");
        return;
    }
    const tag: *c.sluice_filter_types_modification_t = @ptrCast(@alignCast(std.c.malloc(@sizeOf(c.sluice_filter_types_modification_t)).?));
    tag.tag = c.SLUICE_FILTER_TYPES_MODIFICATION_PREPEND_HEADER;
    c.filter_string_dup(&tag.val.prepend_header.name, "X-Filtered-By");
    c.filter_string_dup(&tag.val.prepend_header.value, "zig-example");
    ret.verdict.tag = c.SLUICE_FILTER_TYPES_VERDICT_NEXT;
    ret.modifications = .{ .ptr = tag, .len = 1 };
}

// The hooks this filter has no opinion on.
export fn exports_filter_on_connect(session: *c.filter_session_t, ret: *c.filter_verdict_t) void {
    c.sluice_filter_types_session_free(session);
    ret.tag = c.SLUICE_FILTER_TYPES_VERDICT_NEXT;
}

export fn exports_filter_on_helo(session: *c.filter_session_t, helo: *c.filter_string_t, ret: *c.filter_verdict_t) void {
    c.sluice_filter_types_session_free(session);
    c.filter_string_free(helo);
    ret.tag = c.SLUICE_FILTER_TYPES_VERDICT_NEXT;
}

export fn exports_filter_on_mail(session: *c.filter_session_t, reverse_path: ?*c.filter_address_t, ret: *c.filter_verdict_t) void {
    c.sluice_filter_types_session_free(session);
    if (reverse_path) |path| c.sluice_filter_types_address_free(path);
    ret.tag = c.SLUICE_FILTER_TYPES_VERDICT_NEXT;
}
