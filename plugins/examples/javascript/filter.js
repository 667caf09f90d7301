// The sluice example filter in JavaScript (jco componentize).
//
// Rejects a message whose Subject contains the configured word, tags every
// other message with X-Filtered-By, and refuses recipients whose local part
// starts with "noreply".

let word = "";

export function init(config) {
  word = String(JSON.parse(config).word ?? "").toLowerCase();
  if (!word) throw 'config needs a non-empty "word"';
}

export const onConnect = () => ({ tag: "next" });
export const onHelo = () => ({ tag: "next" });
export const onMail = () => ({ tag: "next" });

export function onRcpt(session, recipient) {
  if (recipient.localPart.toLowerCase().startsWith("noreply")) {
    return { tag: "reject", val: { code: 550, enhanced: "5.1.1", text: "This address accepts no mail" } };
  }
  return { tag: "next" };
}

export function onData(session, message) {
  if ((message.header("Subject") ?? "").toLowerCase().includes(word)) {
    const reply = { code: 550, enhanced: "5.7.1", text: `Subject contains "${word}"` };
    return { verdict: { tag: "reject", val: reply }, modifications: [] };
  }
  const tag = { tag: "prepend-header", val: { name: "X-Filtered-By", value: "javascript-example" } };
  return { verdict: { tag: "next" }, modifications: [tag] };
}
