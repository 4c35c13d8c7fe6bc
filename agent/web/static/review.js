// Review page: times of fixes on hover; the next video segment plays when one ends.
"use strict";
(function () {
  var tip = document.getElementById("tip");
  var track = document.getElementById("track");
  if (track && tip) {
    track.addEventListener("mouseover", function (ev) {
      var t = ev.target;
      if (!t.classList || !t.classList.contains("fix")) return;
      t.classList.add("hot");
      tip.textContent = t.getAttribute("data-label");
      tip.hidden = false;
      tip.style.left = (ev.clientX + 12) + "px";
      tip.style.top = (ev.clientY + 12) + "px";
    });
    track.addEventListener("mouseout", function (ev) {
      var t = ev.target;
      if (t.classList && t.classList.contains("fix")) {
        t.classList.remove("hot");
        tip.hidden = true;
      }
    });
  }
  var player = document.getElementById("player");
  var next = document.getElementById("next");
  if (player && next && player.tagName === "VIDEO") {
    player.addEventListener("ended", function () {
      window.location.href = next.href + "?play=1";
    });
    if (window.location.search.indexOf("play=1") >= 0) {
      var p = player.play();
      if (p && p.catch) p.catch(function () {});
    }
  }
})();
