// mlc review: actions and keyboard shortcuts. No build step, no external script.
(function () {
  "use strict";
  // A per-tab id: the action log says which client acted (two tabs are two clients).
  let tab = sessionStorage.getItem("mlc-review-tab");
  if (!tab) {
    tab = Math.random().toString(36).slice(2, 10);
    sessionStorage.setItem("mlc-review-tab", tab);
  }
  const pageEl = document.getElementById("image-page");
  const msg = document.getElementById("msg");

  function say(text, isError) {
    if (!msg) return;
    msg.textContent = text;
    msg.className = isError ? "error" : "";
  }

  // What an action's answer says that the reloaded page does not (a takedown's published versions):
  // kept for the reload in this tab's sessionStorage, shown once on the same image's page.
  const NOTE = "mlc-review-note";
  function noteForReload(id, text) { sessionStorage.setItem(NOTE, JSON.stringify({id: id, text: text})); }
  const note = sessionStorage.getItem(NOTE);
  if (note) {
    sessionStorage.removeItem(NOTE);
    try {
      const n = JSON.parse(note);
      if (pageEl && String(n.id) === pageEl.dataset.id) say(n.text, false);
    } catch (e) { /* a note this script did not write: nothing to show */ }
  }

  function takedownNote(data) {
    const versions = Object.keys(data.published_in || {}).sort((a, b) => Number(a.slice(1)) - Number(b.slice(1)));
    const heldIn = Object.keys(data.held_in || {}).sort((a, b) => Number(a.slice(1)) - Number(b.slice(1)));
    const copiesIn = Object.keys(data.copies_in || {}).sort((a, b) => Number(a.slice(1)) - Number(b.slice(1)));
    const held = (data.copies ? " " + data.copies + " byte copy(ies) of it under another id taken down too." : "") +
      (copiesIn.length ? " Published versions that hold them (the same file): " + copiesIn.join(", ") +
      "; rebuild or withdraw them as well." : "") +
      (data.held ? " " + data.held + " near duplicate(s) of it held out for review (queue \"changed in review\";" +
      " undo on an image's page if it is another picture)." : "") + (heldIn.length ? " Published versions that hold" +
      " the copies held (the same picture): " + heldIn.join(", ") + "; rebuild or withdraw them as well." : "");
    if (!versions.length) return "Taken down. No published version contains this photo." + held;
    return "Taken down. Published versions that still contain this photo: " + versions.join(", ") +
      ". Rebuild with `mlc build`, or withdraw them with `mlc withdraw vN --reason ...`." + held;
  }

  async function post(url, body) {
    const res = await fetch(url, {
      method: "POST",
      headers: {"Content-Type": "application/json", "X-MLC-Client": tab},
      body: JSON.stringify(body),
      credentials: "same-origin",
    });
    let data = {};
    try { data = await res.json(); } catch (e) { data = {error: res.status + " " + res.statusText}; }
    if (!res.ok) throw new Error(data.error || res.statusText);
    return data;
  }

  async function act(kind) {
    if (!pageEl) return;
    const id = Number(pageEl.dataset.id);
    const reasonEl = document.getElementById("reason");
    let reason = reasonEl ? reasonEl.value : "";
    try {
      if (kind === "undo") {
        if (!pageEl.dataset.undo) { say("nothing to undo", true); return; }
        await post("/api/undo", {id: id, action_id: Number(pageEl.dataset.undo), reason: reason});
      } else if (kind === "remove") {
        reason = window.prompt("Take this photo down for good (files deleted, not undoable). Why?", reason);
        if (!reason) { say("takedown cancelled", true); return; }
        const data = await post("/api/action", {id: id, action: "remove", reason: reason});
        noteForReload(id, takedownNote(data));
      } else {
        // "save as other" (an undecided pool image's button): the relabel to "other", whatever is checked
        const labels = kind === "relabel-other" ? ["other"] : null;
        if (labels) kind = "relabel";
        // The image's latest action as this page saw it: if another tab acted since, the server refuses
        // (409) rather than let this page's stale choice silently replace that work.
        const body = {id: id, action: kind, reason: reason, seen_action: Number(pageEl.dataset.undo || 0)};
        if (kind === "relabel") {
          body.labels = labels || Array.from(document.querySelectorAll("input[name=label]:checked")).map(x => x.value);
          // No box checked means "other" (none of the classes): asked, never done silently.
          if (!body.labels.length) {
            if (!window.confirm('No label is checked: save this image as "other" (none of the classes)?')) {
              say('not saved: check a class, or "other" (o)', true);
              return;
            }
            body.labels = ["other"];
          }
        }
        const data = await post("/api/action", body);
        if (data.changed === false) { say(data.message || "nothing changed", false); return; }   // nothing to reload
      }
      window.location.reload();
    } catch (err) {
      say(err.message, true);
    }
  }

  document.querySelectorAll("button[data-action]").forEach(b => b.addEventListener("click", () => act(b.dataset.action)));

  // A class box toggles; "other" (`o`) is set, never toggled off: it is "none of the classes", and
  // unchecked it left no box checked (a held pool image's "other" is drawn checked: `o`, `s` asked
  // "No label is checked" instead of saving it).
  function toggle(value) {
    const box = document.querySelector(`input[name=label][value="${value}"]`);
    if (!box) return;
    box.checked = value === "other" ? true : !box.checked;
    if (value === "other" && box.checked) {
      document.querySelectorAll("input[name=label]").forEach(b => { if (b.value !== "other") b.checked = false; });
    } else if (value !== "other" && box.checked) {
      const other = document.querySelector('input[name=label][value="other"]');
      if (other) other.checked = false;
    }
  }
  document.querySelectorAll("input[name=label]").forEach(b => b.addEventListener("change", () => {
    if (b.checked) { b.checked = false; toggle(b.value); }
  }));

  function go(id) { const a = document.getElementById(id); if (a) window.location.href = a.href; }

  document.addEventListener("keydown", ev => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const t = ev.target;
    if (t && (t.tagName === "INPUT" && t.type === "text" || t.tagName === "SELECT" || t.tagName === "TEXTAREA" ||
              t.type === "password")) {
      if (ev.key === "Escape") t.blur();
      return;
    }
    const key = ev.key;
    if (key === "Enter" && t && (t.tagName === "BUTTON" || t.tagName === "A")) return;   // their own click
    if (pageEl) {
      if (/^[1-9]$/.test(key)) {
        const boxes = document.querySelectorAll('#label-boxes input[name=label]:not([value="other"])');
        const box = boxes[Number(key) - 1];
        if (box) toggle(box.value);
      } else if (key === "o") toggle("other");
      else if (key === "s" || key === "Enter") act("relabel");
      else if (key === "r") act("reject");
      else if (key === "a") act("restore");
      else if (key === "d") act("not-duplicate");
      else if (key === "u") act("undo");
      else if (key === "j") go("next");
      else if (key === "k") go("prev");
      else if (key === "Escape") go("back");
      else return;
      ev.preventDefault();
    } else {
      if (key === "j" || key === "ArrowRight") go("next-page");
      else if (key === "k" || key === "ArrowLeft") go("prev-page");
    }
  });
})();
